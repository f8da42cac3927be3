"""Built-in datasets: elpv (embedded default), ImageFolder, CIFAR-10/100, STL-10, synthetic."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionssl.data.cache import cached_arrays
from visionssl.data.dataset import ImageDataset
from visionssl.data.decode import decode_images, display_path
from visionssl.data.folders import list_image_folder
from visionssl.errors import DataError
from visionssl.registry import Registry

DATASETS = Registry("dataset")
CACHE_VERSION = 1


def register_dataset(name: str | None = None, *, override: bool = False):
    """Registers a loader ``(arg, split, image_size, **kw) -> ImageDataset`` for ``load_dataset("name:arg")``."""
    return DATASETS.register(name, override=override)


def stratified_split(strata: np.ndarray, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each stratum's share in both parts; returns sorted (train, test) indices.

    Example:
        >>> train, test = stratified_split(np.array([0] * 8 + [1] * 4), 0.25)
        >>> len(train), len(test)
        (9, 3)
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _take_split(ds: ImageDataset, strata: np.ndarray, split: str, seed: int = 0) -> ImageDataset:
    if split == "all":
        return ds
    train, test = stratified_split(strata, seed=seed)
    out = ds.subset(train if split == "train" else test)
    out.split = split
    return out


@register_dataset("elpv")
def elpv(
    arg: str | None = None, split: str = "train", image_size: int | None = None, cache_dir=None, **_: Any
) -> ImageDataset:
    """The elpv solar-cell dataset (2,624 grayscale 300x300 images, shipped by the ``elpv-dataset`` package).

    Labels: ``defect`` (defect probability >= 0.5: "defective", else "functional"; the default) and
    ``type`` ("mono"/"poly"). ``elpv:type`` selects the cell type as default label. The train/test
    split (75/25) is fixed, seeded and stratified by defect probability and type.
    """
    import elpv_dataset

    size = image_size or 300
    csv = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    data = np.genfromtxt(csv, dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    paths = [csv.parent / p for p in np.char.decode(data["path"])]

    def build():
        images, _, _ = decode_images(paths, size, channels=1)
        return images, {}

    images, _ = cached_arrays(f"elpv-{size}-v{CACHE_VERSION}", build, cache_dir)
    prob = data["probability"]
    types = np.char.decode(data["type"])
    labels = {
        "defect": torch.from_numpy((prob >= 0.5).astype(np.int64)),
        "type": torch.from_numpy((types == "poly").astype(np.int64)),
        "probability": torch.from_numpy(np.rint(prob * 3).astype(np.int64)),
    }
    classes = {"defect": ["functional", "defective"], "type": ["mono", "poly"], "probability": ["0", "1/3", "2/3", "1"]}
    label = arg or "defect"
    if label not in labels:
        raise DataError(f"elpv has no label {label!r}; valid: {', '.join(labels)}")
    ds = ImageDataset(torch.from_numpy(np.ascontiguousarray(images)), labels, label, classes, "elpv")
    strata = labels["probability"].numpy() * 2 + labels["type"].numpy()
    return _take_split(ds, strata, split)


@register_dataset("imagefolder")
def imagefolder(
    arg: str | None,
    split: str = "train",
    image_size: int | None = None,
    skip_bad_images: bool = False,
    channels: int = 3,
    cache_dir=None,
    **_: Any,
) -> ImageDataset:
    """A folder with one sub-folder per class (torchvision's ImageFolder layout), decoded once.

    If the folder has ``train/`` and ``test/`` (or ``val/``) sub-folders, ``split`` picks one;
    otherwise the split is a seeded stratified 75/25 split. Images are resized (shorter side) and
    centre-cropped to ``image_size`` (default 224).
    """
    if not arg:
        raise DataError("imagefolder needs a path: 'imagefolder:PATH' or just PATH")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    folder, presplit, paths, targets, class_names = list_image_folder(root, split)
    size = image_size or 224
    listing = hashlib.sha256()
    for p in paths:
        try:
            st = p.stat()
        except OSError:  # gone since the listing, a broken link, a link loop: decoding reports it per file
            st = None
        listing.update(os.fsencode(p) + f"|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
    key = f"folder-{listing.hexdigest()[:16]}-{size}-{channels}-{int(skip_bad_images)}-v{CACHE_VERSION}"

    def build():
        images, ok, skipped = decode_images(paths, size, channels=channels, skip_bad=skip_bad_images)
        return images, {"ok": ok, "skipped": skipped}

    images, info = cached_arrays(key, build, cache_dir)
    if not info["ok"]:
        path, reason = info["skipped"][0]
        raise DataError(
            f"all {len(paths)} images of {display_path(folder)} were skipped as unreadable "
            f"(the first: {display_path(path)}: {reason}); there is nothing to train on"
        )
    y = torch.tensor(targets, dtype=torch.long)[torch.tensor(info["ok"], dtype=torch.long)]
    ds = ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        {"class": y},
        "class",
        {"class": class_names},
        f"imagefolder:{root}",
        skipped=[tuple(s) for s in info["skipped"]],
    )
    if presplit or split == "all":
        ds.split = split
        return ds
    return _take_split(ds, y.numpy(), split)


def _torchvision(cls_name: str, arg: str | None, split: str, image_size: int | None, **kw: Any) -> ImageDataset:
    import torchvision

    if not arg:
        raise DataError(
            f"{cls_name.lower()} needs the folder holding its files: '{cls_name.lower()}:PATH' (nothing is downloaded)"
        )
    cls = getattr(torchvision.datasets, cls_name)
    try:
        if cls_name == "STL10":
            tv = cls(arg, split={"all": "train"}.get(split, split), download=False)
            images, targets, names = tv.data, np.asarray(tv.labels), tv.classes
        else:
            tv = cls(arg, train=split != "test", download=False)
            images, targets, names = tv.data.transpose(0, 3, 1, 2), np.asarray(tv.targets), tv.classes
    except RuntimeError as exc:
        raise DataError(
            f"{cls_name} not found under {arg}: {exc} (download it yourself; visionssl never downloads data)"
        ) from None
    x = torch.from_numpy(np.ascontiguousarray(images))
    if image_size and image_size != x.shape[-1]:
        x = resize_uint8(x, image_size)
    name = cls_name.lower()
    return ImageDataset(
        x, {"class": torch.from_numpy(targets.astype(np.int64))}, "class", {"class": list(names)}, name, split
    )


@register_dataset("cifar10")
def cifar10(arg: str | None, split: str = "train", image_size: int | None = None, **kw: Any) -> ImageDataset:
    """CIFAR-10 from a local folder in torchvision's layout (``cifar-10-batches-py``)."""
    return _torchvision("CIFAR10", arg, split, image_size, **kw)


@register_dataset("cifar100")
def cifar100(arg: str | None, split: str = "train", image_size: int | None = None, **kw: Any) -> ImageDataset:
    """CIFAR-100 from a local folder in torchvision's layout (``cifar-100-python``)."""
    return _torchvision("CIFAR100", arg, split, image_size, **kw)


@register_dataset("stl10")
def stl10(arg: str | None, split: str = "train", image_size: int | None = None, **kw: Any) -> ImageDataset:
    """STL-10 from a local folder in torchvision's layout (``stl10_binary``); split may be "unlabeled"."""
    return _torchvision("STL10", arg, split, image_size, **kw)


@register_dataset("synthetic")
def synthetic(
    arg: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    num_classes: int = 4,
    size: int = 256,
    channels: int = 3,
    seed: int = 0,
    **_: Any,
) -> ImageDataset:
    """Generated images whose class sets the frequency of a randomly oriented grating (for tests and benchmarks).

    ``synthetic:N`` sets the number of images per split.
    """
    n = int(arg) if arg and arg.strip().isdigit() else (size if not arg else 0)
    if n < 1:
        raise DataError(f"data 'synthetic:{arg or size}': N must be a whole number of images >= 1 (e.g. synthetic:256)")
    s = image_size or 32
    g = torch.Generator().manual_seed(seed + (0 if split != "test" else 1))
    y = torch.arange(n) % num_classes
    freq = 1.5 + 2.5 * y.float()  # cycles per image, far apart per class
    theta = torch.rand(n, generator=g) * torch.pi
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    coords = torch.linspace(0, 1, s)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
    wave = torch.sin(2 * torch.pi * freq[:, None, None] * proj + phase[:, None, None])
    tint = 0.5 + 0.5 * torch.rand(n, channels, 1, 1, generator=g)
    img = 0.5 + 0.4 * wave[:, None] * tint + 0.05 * torch.randn(n, channels, s, s, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    classes = [f"freq{c}" for c in range(num_classes)]
    return ImageDataset(images, {"class": y}, "class", {"class": classes}, "synthetic", split)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Antialiased resize of a uint8 (N, C, H, W) tensor to (N, C, size, size), in chunks."""
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out
