"""``ImageDataset``: a whole dataset decoded once into one uint8 tensor, with its labels."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from visionssl.errors import DataError

STORED_RATIO = 1.125  # images are kept (decoded, cached) at this multiple of the view side: room for the crops


def stored_size(view_size: int) -> int:
    """The side images are kept at for views of ``view_size`` pixels (``STORED_RATIO`` times, rounded up).

    Example:
        >>> stored_size(32), stored_size(224)
        (36, 252)
    """
    return math.ceil(view_size * STORED_RATIO)


@dataclass
class ImageDataset:
    """Decoded images and labels, ready to be batched onto the device.

    Attributes:
        images: uint8 tensor (N, C, H, W); C is 1 for grayscale data such as elpv.
        labels: label name -> LongTensor (N,) of class indices (e.g. {"defect": ..., "type": ...}).
        label: the default label used for evaluation (a key of ``labels``), or None if unlabelled.
        classes: label name -> class names, indexed by class index.
        name: the dataset spec it was loaded from (e.g. "elpv", "cifar10").
        split: "train", "test" or "all".
        skipped: (path, reason) of files skipped by ``skip_bad_images``.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), {"c": torch.tensor([0, 1, 0, 1])}, "c",
        ...                   {"c": ["a", "b"]}, "toy")
        >>> len(ds), ds.targets.tolist(), len(ds.subset([0, 1]))
        (4, [0, 1, 0, 1], 2)
    """

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    label: str | None
    classes: dict[str, list[str]]
    name: str
    split: str = "all"
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        for key, y in self.labels.items():
            if len(y) != len(self.images):
                raise ValueError(f"label {key!r} has {len(y)} entries for {len(self.images)} images")
        if self.label is not None and self.label not in self.labels:
            raise DataError(f"unknown label {self.label!r}; valid: {', '.join(self.labels)}")
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> torch.Tensor | None:
        """The default label's class indices, or None for unlabelled data."""
        return self.labels[self.label] if self.label is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.classes[self.label]) if self.label is not None else 0

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def with_label(self, label: str) -> ImageDataset:
        """The same images with another default label."""
        if label not in self.labels:
            raise DataError(f"dataset {self.name!r} has no label {label!r}; valid: {', '.join(self.labels)}")
        return ImageDataset(self.images, self.labels, label, self.classes, self.name, self.split, self.skipped)

    def subset(self, indices: torch.Tensor | list[int]) -> ImageDataset:
        """A dataset holding only ``indices`` (same label names and classes)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            self.images[idx],
            {k: v[idx] for k, v in self.labels.items()},
            self.label,
            self.classes,
            self.name,
            self.split,
            self.skipped,
        )

    def fingerprint(self) -> str:
        """A short hash of the pixels and labels: equal fingerprints mean the same data at the same size."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"{self.name}|{self.split}|{tuple(self.images.shape)}".encode())
            h.update(self.images.contiguous().numpy().tobytes())
            for key in sorted(self.labels):
                h.update(key.encode() + self.labels[key].numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, label={self.label!r})"
        )
