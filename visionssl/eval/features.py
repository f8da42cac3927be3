"""Features of a frozen backbone over a whole dataset, cached on disk.

The uint8 images go to the device in batches and are resized and normalised there (the ``"eval"``
augmentation preset); the backbone runs in eval mode without gradients, in bf16 autocast on CUDA.
With a ``cache_dir`` the features are stored under a key made of the backbone's weights (or a given
``cache_key`` such as a checkpoint's sha256), the dataset's fingerprint and the transform, so evaluating
the same checkpoint on the same data again does not run the backbone.

Example:
    >>> import torch, visionssl as vs
    >>> from visionssl.data.dataset import ImageDataset
    >>> ds = ImageDataset(torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8),
    ...                   {"c": torch.tensor([0, 1, 0, 1, 0, 1])}, "c", {"c": ["a", "b"]}, "toy")
    >>> x, y = vs.eval.extract_features(vs.create_backbone("resnet10t_cifar"), ds, progress=False)
    >>> x.shape, x.dtype, y.tolist()
    (torch.Size([6, 512]), torch.float32, [0, 1, 0, 1, 0, 1])
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from visionssl.backbones.features import (
    batched_features,
    input_channels,
    resolve_device,
)
from visionssl.errors import ConfigError, DataError
from visionssl.files import atomic_write

CACHE_VERSION = 1

__all__ = ["extract_features", "feature_cache_path", "weights_hash", "input_channels", "resolve_device"]


def extract_features(
    backbone: nn.Module,
    dataset,
    batch_size: int = 256,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``backbone`` over every image of ``dataset``: features float32 (N, D) and labels (N,), on the CPU.

    Args:
        backbone: a module mapping (B, C, H, W) to (B, D); it is moved to ``device`` and run in eval mode
            (its train/eval mode is restored afterwards).
        dataset: an ``ImageDataset`` (``.images`` uint8 (N, C, H, W), ``.targets``, ``.fingerprint()``).
        batch_size: images per forward pass.
        image_size: side of the square input (default: the dataset's image size).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        cache_dir: folder of the feature cache (None: no cache).
        cache_key: identifies the weights in the cache key (e.g. a checkpoint's sha256); default: a hash of
            the backbone's state dict.
        progress: show a progress bar.
        layer: ``None`` or ``"final"`` (the backbone's output) or a stage such as ``"stage3"``, pooled
            with global average pooling (``visionssl.eval.layers``; part of the cache key).

    Returns:
        ``(features, labels)``; ``labels`` is ``dataset.targets`` (all -1 for an unlabelled dataset).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise DataError(f"dataset {getattr(dataset, 'name', '')!r} is empty")
    from visionssl.eval.layers import with_layer

    device = resolve_device(device)
    model = with_layer(backbone, layer)  # the weights stay the backbone's: the cache key hashes those
    image_size = int(image_size or dataset.images.shape[-1])
    labels = dataset.targets if dataset.targets is not None else torch.full((len(dataset),), -1)
    labels = torch.as_tensor(labels).long()
    path = None
    if cache_dir is not None:
        path = feature_cache_path(backbone, dataset, cache_dir, image_size, device, cache_key, layer)
        cached = _read_cache(path, len(dataset))
        if cached is not None:
            return cached, labels

    from visionssl.augment import create as create_augmentation

    view = create_augmentation("eval", image_size=image_size, channels=input_channels(backbone)).to(device)
    was_training = backbone.training
    try:
        features = batched_features(model, dataset.images, lambda x: view(x)[0], batch_size, device, progress)
    finally:
        backbone.train(was_training)  # a stage wrapper's mode is not the backbone's: restore the backbone's own
    if path is not None:
        _write_cache(path, features)
    return features, labels


def feature_cache_path(
    backbone: nn.Module,
    dataset,
    cache_dir: str | os.PathLike,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    cache_key: str | None = None,
    layer: str | None = None,
) -> Path:
    """The cache file ``extract_features`` reads and writes for these weights, data and transform.

    The key covers the weights (``cache_key`` or ``weights_hash(backbone)``), ``dataset.fingerprint()``, the
    eval transform (image size, input channels), the precision (bf16 on CUDA, float32 elsewhere) and
    the ``layer`` read (absent from the key for the final output, so older caches stay valid).

    Example:
        >>> import torch
        >>> class Data:  # anything with .images and .fingerprint()
        ...     images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
        ...     def fingerprint(self): return "abc"
        >>> a = feature_cache_path(torch.nn.Linear(2, 2), Data(), "cache", cache_key="sha256-of-ckpt")
        >>> b = feature_cache_path(torch.nn.Linear(2, 2), Data(), "cache", image_size=16, cache_key="sha256-of-ckpt")
        >>> a.parent.name, a.suffix, a != b
        ('cache', '.pt', True)
    """
    device = resolve_device(device)
    key = {
        "version": CACHE_VERSION,
        "weights": cache_key or weights_hash(backbone),
        "data": dataset.fingerprint(),
        "transform": {
            "preset": "eval",
            "image_size": int(image_size or dataset.images.shape[-1]),
            "channels": input_channels(backbone),
        },
        "precision": "bf16" if device.type == "cuda" else "float32",
    }
    if layer not in (None, "final"):
        key["layer"] = layer
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{digest}.pt"


def weights_hash(module: nn.Module) -> str:
    """sha256 of a module's class and state dict (names, dtypes, shapes and bytes of every tensor).

    Example:
        >>> import torch
        >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)  # two random initialisations
        >>> weights_hash(a) == weights_hash(a), weights_hash(a) == weights_hash(b)
        (True, False)
    """
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_cache(path: Path, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        features = torch.load(path, map_location="cpu", weights_only=True)["features"]
        if features.ndim == 2 and len(features) == n and features.dtype == torch.float32:
            return features
        warnings.warn(
            f"ignoring feature cache {path}: it holds shape {tuple(features.shape)} for {n} images", stacklevel=2
        )
    except Exception as exc:  # a damaged cache file is recomputed, never fatal
        warnings.warn(f"ignoring unreadable feature cache {path}: {exc}", stacklevel=2)
    return None


def _write_cache(path: Path, features: torch.Tensor) -> None:
    """Atomic (an older cache file stays whole); a full or read-only disk only costs the cache: a warning."""
    try:
        atomic_write(path, lambda f: torch.save({"features": features}, f))
    except OSError as exc:
        warnings.warn(f"feature cache not written: {exc.strerror or exc}; going on without it", stacklevel=3)
