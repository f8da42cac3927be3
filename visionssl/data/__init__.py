"""Datasets decoded once into uint8 tensors, and the batch loader that feeds the device.

Example:
    >>> import visionssl as vs
    >>> ds = vs.data.load_dataset("synthetic:64", image_size=16)
    >>> ds.images.shape, ds.images.dtype, ds.label
    (torch.Size([64, 3, 16, 16]), torch.uint8, 'class')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionssl.data.dataset import ImageDataset, stored_size
from visionssl.data.decode import BadImageError, decode_image, decode_images
from visionssl.data.loader import BatchLoader
from visionssl.data.shapes import generate_shapes
from visionssl.data.sources import DATASETS, register_dataset, stratified_split
from visionssl.errors import ConfigError

SPLITS = ("train", "test", "all", "unlabeled", "holdout")


def load_dataset(
    spec: str, split: str = "train", image_size: int | None = None, skip_bad_images: bool = False, **kwargs: Any
) -> ImageDataset:
    """Loads a dataset by spec: ``elpv``, ``elpv:type``, ``cifar10:PATH``, ``cifar100:PATH``, ``stl10:PATH``,
    ``imagefolder:PATH`` or just a directory ``PATH``, ``synthetic[:N]``, ``shapes[:N]``, or ``name[:arg]`` of a
    registered loader.

    Args:
        spec: which dataset (see above).
        split: "train", "test" or "all" (elpv and folders without train/test sub-folders use a fixed,
            seeded, stratified 75/25 split); "holdout" where the loader declares it (``shapes``), a split
            never to tune on.
        image_size: side of the square uint8 images kept in memory (default: the dataset's native size).
        skip_bad_images: skip unreadable files (reported in ``dataset.skipped``) instead of failing.

    Example:
        >>> ds = load_dataset("synthetic:32", split="test", image_size=8)
        >>> len(ds), ds.split
        (32, 'test')
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}")
    name, _, arg = spec.partition(":")
    if name not in DATASETS and (Path(spec).expanduser().is_dir() or "/" in spec or spec.startswith(".")):
        name, arg = "imagefolder", spec
    loader = DATASETS.get(name)
    declared = getattr(loader, "splits", None)  # a loader that lists its splits gets no other
    if split == "holdout" and declared is None or declared is not None and split not in declared:
        raise ConfigError(
            f"dataset {spec!r} has no {split!r} split; valid: {', '.join(declared or ('train', 'test', 'all'))}"
        )
    return loader(arg or None, split=split, image_size=image_size, skip_bad_images=skip_bad_images, **kwargs)


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered dataset loaders."""
    return DATASETS.list(pattern)


__all__ = [
    "BadImageError",
    "BatchLoader",
    "DATASETS",
    "ImageDataset",
    "decode_image",
    "decode_images",
    "generate_shapes",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "stored_size",
    "stratified_split",
]
