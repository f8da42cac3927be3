"""MAE's single view (He et al., 2022): random resized crop (scale 0.2-1) and horizontal flip, no colour."""

from __future__ import annotations

from typing import Any

from visionssl.augment import MultiView, Normalize, register_augmentation
from visionssl.augment.crop_jitter import crop_jitter_view


@register_augmentation("mae")
def mae(
    image_size: int = 32, channels: int = 3, scale: tuple[float, float] = (0.2, 1.0), backend: str = "fused", **_: Any
) -> MultiView:
    """One view: crop (``scale``), flip; MAE's masking replaces every other augmentation.

    Example:
        >>> import torch, visionssl as vs
        >>> [tuple(v.shape) for v in vs.augment.create("mae", image_size=16)(torch.rand(2, 3, 20, 20))]
        [(2, 3, 16, 16)]
    """
    view = crop_jitter_view(image_size, scale=tuple(scale), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, backend=backend)
    return MultiView([view], channels=channels, normalize=Normalize())
