"""Batched augmentation on the training device: one uint8 batch in, N views out.

Presets are registered by name; each returns a ``MultiView`` module. The crop-based presets take a
``backend``: ``"fused"`` (the default: the batched ops of ``visionssl.augment.ops``, the fastest) or
``"kornia"`` (the same recipe as Kornia modules).

Example:
    >>> import torch, visionssl as vs
    >>> images = torch.randint(0, 256, (8, 1, 40, 40), dtype=torch.uint8)  # grayscale works
    >>> views = vs.augment.create("simclr", image_size=32)(images)
    >>> len(views), views[0].shape
    (2, torch.Size([8, 3, 32, 32]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from visionssl.registry import Registry

AUGMENTATIONS = Registry("augmentation")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_augmentation(name: str | None = None, *, override: bool = False) -> Callable:
    """Registers a preset factory ``(image_size, **kwargs) -> MultiView``."""
    return AUGMENTATIONS.register(name, override=override)


def create(name: str, image_size: int = 32, **kwargs: Any) -> MultiView:
    """Builds the augmentation preset ``name`` for square views of ``image_size`` pixels.

    Example:
        >>> import torch, visionssl as vs
        >>> aug = vs.augment.create("simclr", image_size=32)
        >>> [v.shape[-1] for v in aug(torch.rand(2, 3, 48, 48))]
        [32, 32]
    """
    return AUGMENTATIONS.create(name, image_size=image_size, **kwargs)


def list_augmentations(pattern: str = "*") -> list[str]:
    """Names of the registered presets."""
    return AUGMENTATIONS.list(pattern)


def to_float(images: torch.Tensor, channels: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] (or float in [0, 1]) -> ``dtype`` in [0, 1] with ``channels`` channels.

    Grayscale input is replicated to 3 channels when ``channels == 3``.

    Example:
        >>> to_float(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).shape
        torch.Size([1, 3, 2, 2])
    """
    if images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    x = images.to(dtype).div_(255.0) if images.dtype == torch.uint8 else images.to(dtype)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:
        return (x * torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=dtype).view(1, 3, 1, 1)).sum(
            1, keepdim=True
        )
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


class Normalize(nn.Module):
    """Per-channel (x - mean) / std; the statistics follow the input's channel count."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        if x.shape[1] == 1:
            mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
        return (x - mean).div_(std)


class MultiView(nn.Module):
    """Turns one batch into ``len(pipelines)`` views; each pipeline draws its own per-sample parameters.

    Args:
        pipelines: one module per view, mapping float [0, 1] (B, C, H, W) to (B, C, S, S).
        channels: channels the backbone expects (grayscale inputs are replicated).
        normalize: applied to every view after its pipeline (None: no normalisation).
        dtype: the views' dtype. The trainer sets ``torch.bfloat16`` when it trains in bf16: autocast
            would round the views to bf16 at the first layer anyway, and on CPUs with hardware bf16
            the resampling products run about 3x faster.
    """

    def __init__(
        self,
        pipelines: Sequence[nn.Module],
        channels: int = 3,
        normalize: nn.Module | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.pipelines = nn.ModuleList(pipelines)
        self.channels = channels
        self.dtype = dtype
        self.normalize = normalize if normalize is not None else nn.Identity()

    @property
    def num_views(self) -> int:
        return len(self.pipelines)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = to_float(images, self.channels, self.dtype)
        return [self.normalize(p(x)).contiguous() for p in self.pipelines]


class Resize(nn.Module):
    """Resizes (antialiased bilinear) to a square of ``size`` pixels; used for evaluation views."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        # antialiased interpolation has no bf16 kernel on the CPU
        y = nn.functional.interpolate(
            x.float(), size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )
        return y.to(x.dtype)


@register_augmentation("eval")
def eval_views(image_size: int = 32, channels: int = 3, **_: Any) -> MultiView:
    """One deterministic view: resize and normalise (feature extraction, kNN)."""
    return MultiView([Resize(image_size)], channels=channels, normalize=Normalize())


def _import_builtin_presets() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_builtin_presets()  # each preset file registers itself
