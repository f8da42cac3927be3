"""The crop-and-colour view pipeline that the crop-based presets build on, as batched transforms on the device."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn

from visionssl.augment.ops import ColorJitterGrayscale, RandomResizedCropFlip, RandomSolarize


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, odd, at least 3.

    Example:
        >>> blur_kernel_size(32), blur_kernel_size(224)
        (3, 23)
    """
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


def crop_jitter_view(
    image_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    jitter_strength: float = 0.5,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
    solarize_p: float = 0.0,
    hflip_p: float = 0.5,
    vflip_p: float = 0.0,
    jitter: tuple[float, float, float, float] | None = None,
    backend: str = "fused",
) -> nn.Module:
    """One view pipeline: crop, flip, colour jitter, grayscale, blur and optional solarisation.

    The general view of the crop-based presets (SimCLR, MoCo, SimSiam, BYOL, VICReg, multi-crop, MAE); each
    preset sets its own strengths and probabilities.

    ``jitter_strength`` s scales brightness/contrast/saturation by 0.8 s and hue by 0.2 s
    (SimCLR uses s = 1 on ImageNet and 0.5 on CIFAR). Set ``blur_p = 0`` for small images.
    ``jitter`` = (brightness, contrast, saturation, hue) sets the four strengths directly and
    overrides ``jitter_strength`` (e.g. BYOL's (0.4, 0.4, 0.2, 0.1)).
    ``vflip_p`` adds vertical flips (for images with no up and down, e.g. solar cells or micrographs).
    ``backend``: "fused" (``visionssl.augment.ops``: crop, flips and blur in one separable resampling,
    the colour ops as one per-sample matrix; the fastest) or "kornia" (the same recipe as Kornia modules).

    Example:
        >>> import torch
        >>> [crop_jitter_view(16, backend=b)(torch.rand(2, 3, 20, 20)).shape[-1] for b in ("fused", "kornia")]
        [16, 16]
    """
    s = jitter_strength
    brightness, contrast, saturation, hue = jitter if jitter is not None else (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    kernel = blur_kernel_size(image_size)
    if backend == "fused":
        ops: list[nn.Module] = [
            RandomResizedCropFlip(
                image_size,
                scale=tuple(scale),
                hflip_p=hflip_p,
                vflip_p=vflip_p,
                blur_p=blur_p,
                blur_kernel=kernel,
                blur_sigma=(0.1, 2.0),
            ),
            ColorJitterGrayscale(brightness, contrast, saturation, hue, p=jitter_p, grayscale_p=grayscale_p),
        ]
        if solarize_p > 0:
            ops.append(RandomSolarize(0.5, p=solarize_p))
        return nn.Sequential(*ops)
    if backend != "kornia":
        raise ValueError(f"unknown augmentation backend {backend!r}; valid: fused, kornia")
    ops = [
        K.RandomResizedCrop((image_size, image_size), scale=scale),
        K.RandomHorizontalFlip(p=hflip_p),
        *([K.RandomVerticalFlip(p=vflip_p)] if vflip_p > 0 else []),
        K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p),
        K.RandomGrayscale(p=grayscale_p),
    ]
    if blur_p > 0:
        ops.append(K.RandomGaussianBlur(kernel, (0.1, 2.0), p=blur_p))
    if solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    return nn.Sequential(*ops)
