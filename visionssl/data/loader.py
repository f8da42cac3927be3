"""Feeds uint8 batches from an in-memory (or memory-mapped) dataset to the device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from visionssl.data.dataset import ImageDataset
from visionssl.errors import ConfigError


def prefetch_to_device(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str | torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Moves each ``(indices, images)`` to ``device``, the copy of the next batch issued before this one is used.

    On CUDA (with pinned host batches) the copies run on a side stream: the copy of batch i+1 overlaps
    the work queued on batch i, and the consumer's stream waits for a copy (an event, not the host)
    only when it receives that batch. Elsewhere this is a plain ``.to(device)``.

    Example:
        >>> batches = [(torch.arange(2), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))]
        >>> [tuple(x.shape) for _, x in prefetch_to_device(batches, "cpu")]
        [(2, 3, 4, 4)]
    """
    device = torch.device(device)
    if device.type != "cuda":
        for indices, images in batches:
            yield indices, images.to(device)
        return
    copy_stream = torch.cuda.Stream(device)

    def issue(batch: tuple[torch.Tensor, torch.Tensor] | None):
        if batch is None:
            return None
        with torch.cuda.stream(copy_stream):
            images = batch[1].to(device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(copy_stream)
        return batch[0], images, copied

    source = iter(batches)
    ahead = issue(next(source, None))
    while ahead is not None:
        indices, images, copied = ahead
        compute = torch.cuda.current_stream(device)
        compute.wait_event(copied)  # this batch's copy only, not the one issued next
        images.record_stream(compute)  # allocated on the side stream, used on this one
        ahead = issue(next(source, None))
        yield indices, images


def uniform_over_labels(labels: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` indices spread uniformly over the labels: DeepCluster's ``UnifLabelSampler``.

    Each non-empty label gets m = n // (non-empty labels) + 1 draws: m of its members without
    replacement when it has more than m, else m with replacement; the draws are shuffled and cut to ``n``.

    Example:
        >>> order = uniform_over_labels(torch.tensor([0] * 8 + [1] * 2), 10, torch.Generator().manual_seed(0))
        >>> len(order), len(set(order[order < 8].tolist())) == int((order < 8).sum())  # no repeats in the big one
        (10, True)
    """
    labels = torch.as_tensor(labels).cpu()
    members = [torch.nonzero(labels == v).flatten() for v in torch.unique(labels)]
    m = n // len(members) + 1
    picks = [
        idx[torch.randperm(len(idx), generator=generator)[:m]]
        if len(idx) > m
        else idx[torch.randint(len(idx), (m,), generator=generator)]
        for idx in members
    ]
    drawn = torch.cat(picks)
    return drawn[torch.randperm(len(drawn), generator=generator)][:n]


class BatchLoader:
    """Seeded, resumable batches of ``(indices, uint8 images on device)``.

    The order of an epoch depends only on ``(seed, epoch)`` (and ``sample_labels`` or ``sample_weights``), so a
    resumed run sees exactly the batches it would have seen.

    Data-parallel training: ``batch_size`` is the GLOBAL batch. Every rank computes the same order and
    each global batch is cut into ``world_size`` contiguous blocks of ``batch_size // world_size``
    images; rank r takes block r. Gathered in rank order, the ranks' blocks are exactly the batch one
    process would see, and ``len(loader)`` (steps per epoch) does not depend on the number of ranks. The next batch is gathered (and pinned
    on CUDA) in a background thread while the current one is being used; the copy to the device is
    ``non_blocking``. No per-image Python work happens here: one gather per batch.

    Example:
        >>> import torch
        >>> from visionssl.data import load_dataset
        >>> loader = BatchLoader(load_dataset("synthetic:10", image_size=8), batch_size=4, seed=0)
        >>> [tuple(x.shape) for _, x in loader.epoch(0)]
        [(4, 3, 8, 8), (4, 3, 8, 8)]
        >>> rank1 = BatchLoader(loader.dataset, batch_size=4, seed=0, rank=1, world_size=2)
        >>> [i.tolist() for i, _ in rank1.epoch(0)] == [b[2:].tolist() for b in loader.order(0)[:8].split(4)]
        True
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size % world_size:
            raise ConfigError(
                f"batch size {batch_size} is the global batch and must be divisible by the number of "
                f"processes ({world_size}); e.g. {batch_size // world_size * world_size or world_size}"
            )
        if world_size > 1 and not drop_last:
            raise ConfigError("drop_last=False would give the ranks batches of different sizes; use drop_last=True")
        if drop_last and batch_size > len(dataset):
            raise ConfigError(f"batch size {batch_size} is larger than the dataset ({len(dataset)} images)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.device, self.shuffle, self.drop_last = torch.device(device), shuffle, drop_last
        self.rank, self.world_size, self.local_batch_size = rank, world_size, batch_size // world_size
        self.sample_weights: torch.Tensor | None = None
        self.sample_labels: torch.Tensor | None = None  # takes precedence over sample_weights

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample indices of ``epoch`` in the order they will be served."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.sample_labels is not None:
            return uniform_over_labels(self.sample_labels, n, g)
        if self.sample_weights is not None:
            return torch.multinomial(self.sample_weights.double(), n, replacement=True, generator=g)
        return torch.randperm(n, generator=g)

    def batches(self, epoch: int, start: int = 0) -> list[torch.Tensor]:
        """The sample indices of batches ``start, start+1, ...`` of ``epoch`` (this rank's block of each)."""
        order = self.order(epoch)
        first = self.rank * self.local_batch_size
        return [
            order[b * self.batch_size : (b + 1) * self.batch_size][first : first + self.local_batch_size]
            for b in range(start, len(self))
        ]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch`` (this rank's block of each)."""
        batches = self.batches(epoch, start)
        pin = self.device.type == "cuda"

        def gather(idx: torch.Tensor) -> torch.Tensor:
            images = self.dataset.images
            if not pin:
                return images[idx]
            out = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            return torch.index_select(images, 0, idx, out=out)  # straight into pinned memory: one copy, not two

        def host_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(gather, batches[0]) if batches else None
                for i, idx in enumerate(batches):
                    x = pending.result()
                    if i + 1 < len(batches):
                        pending = pool.submit(gather, batches[i + 1])
                    yield idx, x

        yield from prefetch_to_device(host_batches(), self.device)
