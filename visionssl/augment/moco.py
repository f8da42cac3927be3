"""MoCo v2's view recipe (Chen et al., 2020, ``aug_plus``), also SimSiam's: ``crop_jitter_view`` pipelines.

Gaussian blur is a large-image augmentation: below 64 px it is left out (p = 0), as in the CIFAR recipes
of the papers and of solo-learn; pass ``blur_p`` to force it. ``backend`` ("fused", the default, or
"kornia") is passed to ``crop_jitter_view``.

Example:
    >>> import torch, visionssl as vs
    >>> views = vs.augment.create("moco", image_size=32)(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    >>> len(views), tuple(views[1].shape)
    (2, (4, 3, 32, 32))
"""

from __future__ import annotations

from typing import Any

from visionssl.augment import MultiView, Normalize, register_augmentation
from visionssl.augment.crop_jitter import crop_jitter_view
from visionssl.augment.ops import SMALL_IMAGE

MOCO_V2_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue


def _symmetric(
    image_size: int, channels: int, scale: tuple[float, float], blur_p: float | None, num_views: int, backend: str
) -> MultiView:
    """MoCo v2's recipe (``aug_plus``): crop, flip, jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, blur 0.5."""
    if blur_p is None:
        blur_p = 0.0 if image_size < SMALL_IMAGE else 0.5
    views = [
        crop_jitter_view(
            image_size,
            scale=tuple(scale),
            jitter=MOCO_V2_JITTER,
            jitter_p=0.8,
            grayscale_p=0.2,
            blur_p=blur_p,
            backend=backend,
        )
        for _ in range(num_views)
    ]
    return MultiView(views, channels=channels, normalize=Normalize())


@register_augmentation("moco")
def moco(
    image_size: int = 32,
    channels: int = 3,
    scale: tuple[float, float] = (0.2, 1.0),
    blur_p: float | None = None,
    num_views: int = 2,
    backend: str = "fused",
    **_: Any,
) -> MultiView:
    """MoCo v2's two views (Chen et al., 2020, ``aug_plus``): crop scale 0.2-1, jitter (0.4, 0.4, 0.4, 0.1)
    with p = 0.8, grayscale p = 0.2, blur p = 0.5 (none below 64 px unless ``blur_p`` is given)."""
    return _symmetric(image_size, channels, scale, blur_p, num_views, backend)


register_augmentation("simsiam")(moco)  # SimSiam's views are MoCo v2's (Chen & He, 2021, section 4)
