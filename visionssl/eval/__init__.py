"""Evaluation of frozen features: FAISS kNN, a linear probe with a parallel sweep, cached feature extraction;
fine-tuning with few labels (``finetune``); and the report of the checkpoints x datasets benchmark (run by
``visionssl benchmark``, ``visionssl.cli.benchmark``).

Example:
    >>> import torch, visionssl as vs
    >>> from visionssl.data import load_dataset
    >>> train, test = load_dataset("synthetic:64", "train", 16), load_dataset("synthetic:32", "test", 16)
    >>> backbone = vs.create_backbone("resnet10t_cifar")
    >>> (train_x, train_y), (test_x, test_y) = (vs.eval.extract_features(backbone, ds, progress=False) for ds in (train, test))
    >>> sorted(vs.eval.knn(train_x, train_y, test_x, test_y, k=(10, 20)))
    ['top1@k10', 'top1@k20', 'top5@k10', 'top5@k20']
    >>> "top1" in vs.eval.linear_probe(train_x, train_y, test_x, test_y, epochs=5)
    True
"""

from visionssl.eval.embed import embed, neighbors
from visionssl.eval.features import extract_features, feature_cache_path, weights_hash
from visionssl.eval.finetune import finetune
from visionssl.eval.finetune_subset import label_subset
from visionssl.eval.knn import knn, knn_predict, knn_scores, knn_search, rank_accuracy
from visionssl.eval.linear_probe import (
    holdout_split,
    linear_probe,
    linear_probe_classic,
    stratified_kfold,
)

__all__ = [
    "embed",
    "extract_features",
    "feature_cache_path",
    "finetune",
    "knn",
    "knn_predict",
    "knn_scores",
    "knn_search",
    "label_subset",
    "linear_probe",
    "linear_probe_classic",
    "neighbors",
    "rank_accuracy",
    "stratified_kfold",
    "holdout_split",
    "weights_hash",
]
