"""Multi-crop views (Caron et al., 2020, SwAV, arXiv 2006.09882): 2 global crops and V smaller local
crops, batched on the device with one resampling per crop group.

Example:
    >>> import torch, visionssl as vs
    >>> aug = vs.augment.create("multicrop", image_size=32, num_local=4)
    >>> views = aug(torch.randint(0, 256, (3, 1, 40, 40), dtype=torch.uint8))
    >>> aug.num_views, [v.shape[-1] for v in views]
    (6, [32, 32, 16, 16, 16, 16])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl.augment import MultiView, Normalize, register_augmentation, to_float
from visionssl.augment.byol import BYOL_JITTER
from visionssl.augment.crop_jitter import crop_jitter_view
from visionssl.augment.ops import SMALL_IMAGE


class MultiCrop(MultiView):
    """``num_global`` views from one pipeline and ``num_local`` from another, each group drawn in one
    batched call on the images repeated per view (independent per-sample parameters for every view).

    ``pipelines`` holds the two group pipelines (global, local); ``num_views`` counts the views.
    The views come out globals first. Not supported by ``data.stream`` (per-view crops in the workers).
    """

    def __init__(
        self,
        global_view: nn.Module,
        local_view: nn.Module,
        num_global: int = 2,
        num_local: int = 6,
        channels: int = 3,
        normalize: nn.Module | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__([global_view, local_view], channels=channels, normalize=normalize, dtype=dtype)
        if num_global < 1 or num_local < 0:
            raise ValueError(f"multi-crop needs num_global >= 1 and num_local >= 0; got {num_global} and {num_local}")
        self.num_global, self.num_local = num_global, num_local

    @property
    def num_views(self) -> int:
        return self.num_global + self.num_local

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = to_float(images, self.channels, self.dtype)
        views: list[torch.Tensor] = []
        for pipeline, count in zip(self.pipelines, (self.num_global, self.num_local)):
            if count:
                group = self.normalize(pipeline(x.repeat(count, 1, 1, 1)))
                views += [v.contiguous() for v in group.chunk(count)]
        return views


def local_crop_size(image_size: int) -> int:
    """SwAV's 96/224 of the global side, rounded to a multiple of 8 (ViT patches of 4 or 8 tile it), at least 8.

    Example:
        >>> local_crop_size(224), local_crop_size(32), local_crop_size(64)
        (96, 16, 24)
    """
    return max(8, 8 * round(image_size * 96 / 224 / 8))


@register_augmentation("multicrop")
def multicrop(
    image_size: int = 32,
    channels: int = 3,
    num_local: int = 6,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.14),
    blur_p: float | None = None,
    jitter: tuple[float, float, float, float] = BYOL_JITTER,
    backend: str = "fused",
    **_: Any,
) -> MultiCrop:
    """2 global crops of ``image_size`` (scale 0.14-1) and ``num_local`` local crops of ``local_size``
    (default ``local_crop_size(image_size)``; scale 0.05-0.14), SwAV's multi-crop. Colour: ``jitter`` (brightness,
    contrast, saturation, hue; default DINO's and BYOL's 0.4, 0.4, 0.2, 0.1; SwAV's recipes pass its 0.8, 0.8, 0.8,
    0.2) p = 0.8, grayscale 0.2; blur p = 0.5 from 64 px (none below unless ``blur_p``).
    DINO uses scales (0.4, 1) and (0.05, 0.4) for ViTs: pass ``global_scale``/``local_scale``.
    """
    if blur_p is None:
        blur_p = 0.0 if image_size < SMALL_IMAGE else 0.5
    local_size = local_size or local_crop_size(image_size)

    def view(size: int, scale: tuple[float, float]) -> nn.Module:
        return crop_jitter_view(
            size,
            scale=tuple(scale),
            jitter=tuple(jitter),
            jitter_p=0.8,
            grayscale_p=0.2,
            blur_p=blur_p,
            backend=backend,
        )

    return MultiCrop(
        view(image_size, global_scale),
        view(local_size, local_scale),
        num_global=2,
        num_local=num_local,
        channels=channels,
        normalize=Normalize(),
    )
