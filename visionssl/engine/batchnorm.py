"""Precise BatchNorm: re-estimate a network's BatchNorm statistics on the images it will be used on.

Patch-based methods (jigsaw, context prediction) train the backbone on small tiles, so the running
statistics its BatchNorm layers keep at the end of pretraining describe tiles, not the whole images
that kNN, linear probes and fine-tuning give it. Wu & Johnson ("Rethinking 'Batch' in BatchNorm",
2021) call this a train-test inconsistency and fix it by recomputing the statistics with the final
weights, as their "precise BN": a few forward passes, no labels, no gradients.
"""

from __future__ import annotations

import torch
from torch import nn

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


@torch.no_grad()
def recalibrate_batchnorm(
    module: nn.Module,
    images: torch.Tensor,
    image_size: int,
    batch_size: int = 256,
    max_images: int = 8192,
    device: str | torch.device | None = None,
) -> int:
    """Recomputes every BatchNorm layer's running mean and variance over ``images``.

    The images (uint8 ``(N, C, H, W)``) go through the ``eval`` view at ``image_size`` (the view
    kNN and linear probes use) in batches of ``batch_size``; each layer's statistics become the
    average of the batch statistics (``momentum=None``), over at most ``max_images`` images spread
    evenly over the set (deterministic, so every rank of a data-parallel run gets the same result).
    Weights are untouched; the module's mode and the layers' momentum are restored.

    Returns:
        The number of BatchNorm layers updated (0 when the module has none).

    Example:
        >>> import torch, visionssl as vs
        >>> net = vs.create_backbone("resnet10t_cifar")
        >>> recalibrate_batchnorm(net, torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), 16)
        14
    """
    from visionssl.augment import create as create_augmentation
    from visionssl.backbones.features import input_channels

    if batch_size < 1 or max_images < 1:
        raise ValueError(f"batch_size and max_images must be >= 1, got {batch_size} and {max_images}")
    if images.ndim != 4 or images.dtype != torch.uint8 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
        )
    layers = [m for m in module.modules() if isinstance(m, _BATCHNORM) and m.track_running_stats]
    if not layers:
        return 0
    device = torch.device(device) if device is not None else next(module.parameters()).device
    if len(images) > max_images:
        images = images[torch.linspace(0, len(images) - 1, max_images).long()]
    view = create_augmentation("eval", image_size=image_size, channels=input_channels(module)).to(device)
    momenta = [m.momentum for m in layers]
    was_training = module.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    module.train()
    try:
        for start in range(0, len(images), batch_size):
            module(view(images[start : start + batch_size].to(device, non_blocking=True))[0])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        module.train(was_training)
    return len(layers)


__all__ = ["recalibrate_batchnorm"]
