"""The presets of the pretext methods: one view (resize, random crop, optional flip / grayscale) per image.

Registered as ``rotation``, ``context``, ``jigsaw`` and ``deepcluster``; the methods cut the view up in
their ``forward`` (``visionssl.augment.pretext`` holds the batched cuts).

Example:
    >>> import torch, visionssl as vs
    >>> [v.shape for v in vs.augment.create("rotation", image_size=16)(torch.zeros(2, 3, 24, 24, dtype=torch.uint8))]
    [torch.Size([2, 3, 16, 16])]
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
from torch import nn

from visionssl.augment import MultiView, Normalize, Resize, register_augmentation
from visionssl.augment.ops import SMALL_IMAGE


def pretext_view(
    image_size: int, resize_ratio: float = 256 / 224, hflip_p: float = 0.5, grayscale_p: float = 0.0
) -> nn.Module:
    """Resize to ``image_size * resize_ratio``, random ``image_size`` crop, optional flip and grayscale.

    The "resize 256, random crop 224" recipe of RotNet, context prediction and jigsaw, at any size.
    """
    ops: list[nn.Module] = [
        Resize(max(image_size, round(image_size * resize_ratio))),
        K.RandomCrop((image_size, image_size)),
    ]
    if hflip_p > 0:
        ops.append(K.RandomHorizontalFlip(p=hflip_p))
    if grayscale_p > 0:
        ops.append(K.RandomGrayscale(p=grayscale_p))
    return nn.Sequential(*ops)


@register_augmentation("rotation")
def rotation(
    image_size: int = 32, channels: int = 3, resize_ratio: float = 256 / 224, hflip_p: float = 0.5, **_: Any
) -> MultiView:
    """RotNet's view (Gidaris et al., 2018): random crop after a resize, horizontal flip; no rotation
    here (the method rotates)."""
    return MultiView([pretext_view(image_size, resize_ratio, hflip_p)], channels=channels, normalize=Normalize())


@register_augmentation("context")
def context(
    image_size: int = 32, channels: int = 3, resize_ratio: float = 256 / 224, hflip_p: float = 0.0, **_: Any
) -> MultiView:
    """Context prediction's view (Doersch et al., 2015): a random crop; colour handling (dropping or
    projection), the grid, gap and jitter are done by the method on the patches."""
    return MultiView([pretext_view(image_size, resize_ratio, hflip_p)], channels=channels, normalize=Normalize())


@register_augmentation("jigsaw")
def jigsaw(
    image_size: int = 32,
    channels: int = 3,
    resize_ratio: float = 256 / 225,
    hflip_p: float = 0.0,
    grayscale_p: float = 0.3,
    **_: Any,
) -> MultiView:
    """Jigsaw's view (Noroozi & Favaro, 2016): a random crop (225 of 256 px in the paper) and 30%
    grayscale images; tiles, jitter and per-tile normalisation are done by the method."""
    return MultiView(
        [pretext_view(image_size, resize_ratio, hflip_p, grayscale_p)], channels=channels, normalize=Normalize()
    )


@register_augmentation("deepcluster")
def deepcluster(
    image_size: int = 32,
    channels: int = 3,
    scale: tuple[float, float] | None = None,
    hflip_p: float = 0.5,
    jitter_strength: float = 0.0,
    **_: Any,
) -> MultiView:
    """DeepCluster's view (Caron et al., 2018): random resized crop and horizontal flip. The crop
    scale is (0.08, 1) from 64 px (the paper's) and (0.2, 1) below (small images lose too much).
    ``jitter_strength`` s > 0 adds brightness and contrast jitter of 0.8 s (p = 0.8): for grayscale
    data, where the paper's Sobel filter has no colour to remove but overall intensity is the cue
    that k-means would otherwise group by."""
    scale = tuple(scale) if scale is not None else ((0.2, 1.0) if image_size < SMALL_IMAGE else (0.08, 1.0))
    ops = [K.RandomResizedCrop((image_size, image_size), scale=scale), K.RandomHorizontalFlip(p=hflip_p)]
    if jitter_strength > 0:
        ops.append(K.ColorJitter(brightness=0.8 * jitter_strength, contrast=0.8 * jitter_strength, p=0.8))
    return MultiView([nn.Sequential(*ops)], channels=channels, normalize=Normalize())
