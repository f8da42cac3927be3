"""Evaluation of frozen features: FAISS kNN, linear probe on cached features, feature extraction, benchmarks."""
from visionssl.eval.knn import knn, knn_predict, knn_scores, knn_search, rank_accuracy
from visionssl.eval.features import extract_features, feature_cache_path, weights_hash
from visionssl.eval.linear_probe import linear_probe, linear_probe_classic, stratified_split
