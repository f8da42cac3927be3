"""BYOL's asymmetric view recipe (Grill et al., 2020, table 6), also VICReg's: ``crop_jitter_view`` pipelines.

Gaussian blur is a large-image augmentation: below 64 px it is left out (p = 0), as in the CIFAR recipes
of the papers and of solo-learn; pass ``blur_p`` to force it. ``backend`` ("fused", the default, or
"kornia") is passed to ``crop_jitter_view``.

Example:
    >>> import torch, visionssl as vs
    >>> views = vs.augment.create("byol", image_size=32)(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    >>> len(views), tuple(views[1].shape)
    (2, (4, 3, 32, 32))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from visionssl.augment import MultiView, Normalize, register_augmentation
from visionssl.augment.crop_jitter import crop_jitter_view
from visionssl.augment.ops import SMALL_IMAGE

BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue


def _asymmetric(
    image_size: int,
    channels: int,
    scale: tuple[float, float],
    blur_p: float | tuple[float, float] | None,
    solarize_p: float | tuple[float, float],
    backend: str,
) -> MultiView:
    """BYOL's recipe (table 6): both views crop, flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2;
    view 1 blur p=1.0 and no solarisation, view 2 blur p=0.1 and solarisation p=0.2."""
    if blur_p is None:
        blur_p = (0.0, 0.0) if image_size < SMALL_IMAGE else (1.0, 0.1)
    blur_p, solarize_p = _per_view(blur_p, "blur_p"), _per_view(solarize_p, "solarize_p")
    views = [
        crop_jitter_view(
            image_size,
            scale=tuple(scale),
            jitter=BYOL_JITTER,
            jitter_p=0.8,
            grayscale_p=0.2,
            blur_p=blur,
            solarize_p=solarize,
            backend=backend,
        )
        for blur, solarize in zip(blur_p, solarize_p)
    ]
    return MultiView(views, channels=channels, normalize=Normalize())


def _per_view(p: float | Sequence[float], name: str) -> tuple[float, float]:
    """One probability per view; a single number applies to both."""
    if isinstance(p, (int, float)):
        return (float(p), float(p))
    if len(p) != 2:
        raise ValueError(f"{name} takes one probability per view (2 values, e.g. (1.0, 0.1)); got {tuple(p)}")
    return (float(p[0]), float(p[1]))


@register_augmentation("byol")
def byol(
    image_size: int = 32,
    channels: int = 3,
    scale: tuple[float, float] = (0.08, 1.0),
    blur_p: float | tuple[float, float] | None = None,
    solarize_p: float | tuple[float, float] = (0.0, 0.2),
    backend: str = "fused",
    **_: Any,
) -> MultiView:
    """BYOL's asymmetric two views (Grill et al., 2020, table 6): blur p = (1.0, 0.1) (none below 64 px
    unless ``blur_p`` is given), solarisation p = (0.0, 0.2), jitter (0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale 0.2."""
    return _asymmetric(image_size, channels, scale, blur_p, solarize_p, backend)


register_augmentation("vicreg")(byol)  # VICReg's views are BYOL's (Bardes et al., 2022, appendix C.1)
