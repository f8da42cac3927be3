"""Feature extraction split over the ranks of a data-parallel job (torchrun), for kNN and linear probes.

Each rank runs the frozen backbone over its contiguous block of the dataset (``visionssl.distributed.
shard_bounds``) and the blocks are gathered in order: the result is the feature matrix one process
would compute, in ``1 / world_size`` of the time. On one process it is ``extract_features``.

Example:
    >>> import torch, visionssl as vs
    >>> from visionssl.data import load_dataset
    >>> ds = load_dataset("synthetic:8", image_size=16)
    >>> x, y = extract_features_distributed(vs.create_backbone("resnet10t_cifar"), ds)
    >>> x.shape, y.shape
    (torch.Size([8, 512]), torch.Size([8]))
"""

from __future__ import annotations

import torch
from torch import nn

from visionssl import distributed
from visionssl.eval.features import extract_features

__all__ = ["extract_features_distributed"]


def extract_features_distributed(
    backbone: nn.Module,
    dataset,
    batch_size: int = 256,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    dst: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``extract_features`` with the images split over the ranks; features float32 (N, D) and labels (N,) on the CPU.

    Every rank must call it (it is a collective) with the same backbone weights and dataset. Features
    are per image (the backbone runs in eval mode), so they equal the single-process ones up to float
    rounding, and so do the kNN and linear-probe accuracies computed from them.

    Args:
        backbone, dataset, batch_size, image_size: as for ``extract_features`` (``batch_size`` per rank).
        device: this rank's device (default: its GPU when there is one, else the CPU).
        dst: None: every rank receives the features; a rank number: only that rank does (the others get
            ``None`` for the features and never hold more than one chunk of them: ImageNet-sized banks).
        progress: show a progress bar (on rank 0 only).

    Returns:
        ``(features or None, labels)``; ``labels`` are ``dataset.targets`` (all -1 when unlabelled) on every rank.
    """
    n = len(dataset)
    if not distributed.is_distributed() or n < distributed.world_size():  # too few images to split: all work
        features, labels = extract_features(
            backbone, dataset, batch_size, image_size, device, progress=progress and distributed.is_main()
        )
        return (features if dst is None or distributed.rank() == dst else None), labels
    start, stop = distributed.shard_bounds(n)
    block = _Rows(dataset, start, stop)
    local, _ = extract_features(
        backbone,
        block,
        batch_size,
        image_size or dataset.images.shape[-1],
        device,
        progress=progress and distributed.is_main(),
    )
    labels = dataset.targets if dataset.targets is not None else torch.full((n,), -1)
    return distributed.gather_rows(local, n, dst=dst), torch.as_tensor(labels).long()


class _Rows:
    """Rows ``start:stop`` of a dataset, seen as the dataset ``extract_features`` expects (no copy of the rest)."""

    def __init__(self, dataset, start: int, stop: int):  # noqa: ANN001
        self.images = dataset.images[start:stop]
        self.targets = None
        self.name = f"{getattr(dataset, 'name', 'dataset')}[{start}:{stop}]"

    def __len__(self) -> int:
        return len(self.images)
