"""Running a frozen backbone over many images: the device it runs on, the channels it takes, the batched loop.

``visionssl.eval.extract_features`` adds the disk cache and the labels on top; DeepCluster uses the loop
for the features it clusters.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    >>> batched_features(net, images, lambda x: x.float() / 255, batch_size=2, device="cpu").shape
    torch.Size([5, 4])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from visionssl.errors import ConfigError


def batched_features(
    net: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``net(transform(batch))`` over uint8 ``images`` (N, C, H, W) in batches: float32 (N, D) on the CPU.

    Batches are copied to ``device`` (pinned, non-blocking on CUDA) and run without gradients, in bf16
    autocast on CUDA. ``net`` is put in eval mode when it is a module (its mode is restored afterwards).
    ``net`` must return (B, D); anything else is a ``ValueError``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(device)
    from tqdm.auto import tqdm

    was_training = net.training if isinstance(net, nn.Module) else None
    if isinstance(net, nn.Module):
        net.to(device).eval()
    features = None
    try:
        with torch.no_grad(), tqdm(total=len(images), unit="img", desc="features", disable=not progress) as bar:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                if device.type == "cuda":
                    batch = batch.pin_memory()
                x = transform(batch.to(device, non_blocking=True))
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    out = net(x)
                if out.ndim != 2:
                    raise ValueError(f"the backbone must return (B, D) features, got shape {tuple(out.shape)}")
                if features is None:
                    features = torch.empty(len(images), out.shape[1], dtype=torch.float32)
                features[start : start + len(batch)] = out.float().cpu()
                bar.update(len(batch))
    finally:
        if was_training is not None:
            net.train(was_training)
    return features if features is not None else torch.empty(0, 0)


def input_channels(backbone: nn.Module) -> int:
    """Channels the backbone expects: ``in_channels`` of its first convolution (3 when it has none).

    Example:
        >>> import visionssl as vs
        >>> input_channels(vs.create_backbone("resnet10t_cifar")), input_channels(vs.create_backbone("resnet18", in_chans=1))
        (3, 1)
    """
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def resolve_device(device: str | torch.device | None = None, name: str = "device") -> torch.device:
    """``None`` or ``"auto"`` -> CUDA when available, else CPU; anything else as given.

    A malformed device (or one no run can use, such as ``meta``), or CUDA or MPS without such a GPU, is a
    ``ConfigError`` naming the setting (``name``).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("meta", name="train.device")
        Traceback (most recent call last):
        visionssl.errors.ConfigError: train.device='meta' is not a device; valid: auto, cpu, cuda, cuda:N, mps
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{name}={str(device)!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name}={str(device)!r} but no CUDA GPU is available; use 'cpu' or 'auto'")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{name}={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name}={str(device)!r} but no Apple GPU (MPS) is available; use 'cpu' or 'auto'")
    return resolved
