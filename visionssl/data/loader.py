"""Feeds uint8 batches from an in-memory (or memory-mapped) dataset to the device."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from visionssl.data.dataset import ImageDataset


class BatchLoader:
    """Seeded, resumable batches of ``(indices, uint8 images on device)``.

    The order of an epoch depends only on ``(seed, epoch)`` (and ``sample_weights`` if given), so a
    resumed run sees exactly the batches it would have seen. The next batch is gathered (and pinned
    on CUDA) in a background thread while the current one is being used; the copy to the device is
    ``non_blocking``. No per-image Python work happens here: one gather per batch.

    Example:
        >>> import torch
        >>> from visionssl.data import load_dataset
        >>> loader = BatchLoader(load_dataset("synthetic:10", image_size=8), batch_size=4, seed=0)
        >>> [tuple(x.shape) for _, x in loader.epoch(0)]
        [(4, 3, 8, 8), (4, 3, 8, 8)]
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(dataset):
            raise ValueError(f"batch size {batch_size} is larger than the dataset ({len(dataset)} images)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.device, self.shuffle, self.drop_last = torch.device(device), shuffle, drop_last
        self.sample_weights: torch.Tensor | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample indices of ``epoch`` in the order they will be served."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.sample_weights is not None:
            return torch.multinomial(self.sample_weights.double(), n, replacement=True, generator=g)
        return torch.randperm(n, generator=g)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch``."""
        order = self.order(epoch)
        batches = [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(start, len(self))]
        pin = self.device.type == "cuda"

        def gather(idx: torch.Tensor) -> torch.Tensor:
            x = self.dataset.images[idx]
            return x.pin_memory() if pin else x

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(gather, batches[0]) if batches else None
            for i, idx in enumerate(batches):
                x = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(gather, batches[i + 1])
                yield idx, x.to(self.device, non_blocking=True)
