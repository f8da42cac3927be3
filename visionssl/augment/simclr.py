"""SimCLR's view recipe (Chen et al., 2020, appendix A): two ``crop_jitter_view`` pipelines."""

from __future__ import annotations

from typing import Any

from visionssl.augment import MultiView, Normalize, register_augmentation
from visionssl.augment.crop_jitter import crop_jitter_view
from visionssl.augment.ops import SMALL_IMAGE


@register_augmentation("simclr")
def simclr(
    image_size: int = 32,
    channels: int = 3,
    scale: tuple[float, float] = (0.08, 1.0),
    jitter_strength: float | None = None,
    blur_p: float | None = None,
    vflip_p: float = 0.0,
    num_views: int = 2,
    backend: str = "fused",
    **_: Any,
) -> MultiView:
    """SimCLR's two views. Below 64 px: jitter strength 0.5 and no blur (the paper's CIFAR recipe);
    from 64 px: strength 1.0 and blur with p = 0.5 (its ImageNet recipe). Either can be set;
    ``vflip_p`` adds vertical flips (images without an up and a down).
    """
    small = image_size < SMALL_IMAGE
    s = jitter_strength if jitter_strength is not None else (0.5 if small else 1.0)
    p = blur_p if blur_p is not None else (0.0 if small else 0.5)
    views = [
        crop_jitter_view(image_size, scale=tuple(scale), jitter_strength=s, blur_p=p, vflip_p=vflip_p, backend=backend)
        for _ in range(num_views)
    ]
    return MultiView(views, channels=channels, normalize=Normalize())
