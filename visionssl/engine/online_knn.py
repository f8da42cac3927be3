"""The trainer's online kNN (``train.knn_every``): frozen-backbone features of a labelled bank and queries,
split over the ranks, and a weighted kNN vote on rank 0.

The vote is ``visionssl.eval.knn``'s with its defaults (cosine similarity, ``exp(s / T)`` weights,
ties to the smaller class, top-5 over ``min(5, classes)``), searched exactly with chunked matrix
products on the trainer's device, so the numbers are the ones ``vs.eval.knn`` gives on the same
features. The engine sits below ``visionssl.eval`` and does not import it.

Example:
    >>> import visionssl as vs
    >>> from visionssl.data import load_dataset
    >>> bank, queries = load_dataset("synthetic:16", "train", 16), load_dataset("synthetic:8", "test", 16)
    >>> sorted(online_knn(vs.create_backbone("resnet10t_cifar"), bank, queries, k=5))
    ['top1', 'top5']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from visionssl import distributed
from visionssl.backbones.features import batched_features, input_channels, resolve_device
from visionssl.data import load_dataset


def online_knn(
    backbone: nn.Module,
    bank: Any,
    queries: Any,
    *,
    batch_size: int = 256,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float] | None:
    """Top-1/top-5 kNN accuracy (percent) of ``queries`` against ``bank`` (labelled datasets, ``.images`` uint8).

    A collective under torchrun: every rank extracts its block of the images; rank 0 gets the
    metrics, the others ``None``. The backbone's train/eval mode is restored.
    """
    device = resolve_device(device)
    bank_x = _features(backbone, bank, batch_size, image_size, device)
    query_x = _features(backbone, queries, batch_size, image_size, device)
    if not distributed.is_main():
        return None
    return knn_accuracy(bank_x, _labels(bank), query_x, _labels(queries), k, temperature, device)


@torch.no_grad()
def knn_accuracy(
    bank_x: torch.Tensor,
    bank_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Weighted kNN top-1/top-5 accuracy (percent), exact search; equal to ``vs.eval.knn(..., k)``'s.

    Example:
        >>> bank, labels = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), torch.tensor([0, 0, 1])
        >>> knn_accuracy(bank, labels, torch.tensor([[0.1, 1.0]]), torch.tensor([1]), k=1)
        {'top1': 100.0, 'top5': 100.0}
    """
    bank = F.normalize(bank_x.to(device, torch.float32), dim=1)
    bank_y, query_y = bank_y.to(device), query_y.to(device)
    classes = 1 + int(torch.cat([bank_y, query_y]).max())
    rows = max(1, 2**26 // max(1, len(bank)))  # queries per chunk: a similarity block of at most 256 MB
    top1 = top5 = 0
    for start in range(0, len(query_x), rows):
        query = F.normalize(query_x[start : start + rows].to(device, torch.float32), dim=1)
        sims, ids = (query @ bank.T).topk(k, dim=1)
        weights = torch.exp((sims - sims[:, :1]) / temperature)  # shifted by the best: no overflow at small T
        votes = torch.zeros(len(query), classes, device=device).scatter_add_(1, bank_y[ids], weights)
        best = torch.sort(votes, dim=1, descending=True, stable=True).indices[:, : min(5, classes)]
        hit = best == query_y[start : start + rows, None]
        top1 += int(hit[:, 0].sum())
        top5 += int(hit.any(dim=1).sum())
    return {"top1": 100.0 * (top1 / len(query_x)), "top5": 100.0 * (top5 / len(query_x))}  # rounded as eval.knn


def knn_datasets(data: DictConfig, train_set: Any) -> tuple[Any, Any]:
    """The (bank, queries) of ``data`` (a run config's ``data``): ``data.eval``'s train and test splits, else
    the labelled training set and its test split, else ``(None, None)`` (unlabelled data: no kNN).

    Example:
        >>> from omegaconf import OmegaConf
        >>> data = OmegaConf.create({"name": "synthetic:16", "eval": None, "image_size": 8, "skip_bad_images": False})
        >>> train = load_dataset("synthetic:16", "train", 8)
        >>> bank, queries = knn_datasets(data, train)
        >>> bank is train, len(queries) > 0
        (True, True)
    """
    if data.eval:
        return load_dataset(data.eval, "train", data.image_size), load_dataset(data.eval, "test", data.image_size)
    if train_set.targets is not None:
        return train_set, load_dataset(data.name, "test", data.image_size, data.skip_bad_images)
    return None, None


def _features(backbone: nn.Module, dataset: Any, batch_size: int, image_size: int | None, device: torch.device):
    """The eval view's features of every image, on rank 0 (``None`` elsewhere); each rank runs its block."""
    from visionssl.augment import create as create_augmentation

    n = len(dataset)
    split = distributed.is_distributed() and n >= distributed.world_size()
    start, stop = distributed.shard_bounds(n) if split else (0, n)
    size = int(image_size or dataset.images.shape[-1])
    view = create_augmentation("eval", image_size=size, channels=input_channels(backbone)).to(device)
    local = batched_features(backbone, dataset.images[start:stop], lambda x: view(x)[0], batch_size, device)
    return distributed.gather_rows(local, n, dst=0) if split else local


def _labels(dataset: Any) -> torch.Tensor:
    return torch.as_tensor(dataset.targets).long()
