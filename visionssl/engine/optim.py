"""Optimizers (SGD, LARS, AdamW) and the cosine learning-rate schedule with linear warmup."""

from __future__ import annotations

import math
from typing import Any

import torch

from visionssl.errors import ConfigError

OPTIMIZERS = ("sgd", "lars", "adamw")


def create_optimizer(
    param_groups: list[dict[str, Any]],
    name: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """SGD (momentum), LARS (timm's, no adaptation where weight decay is 0) or AdamW over ``param_groups``.

    LARS scales each layer's step to ``lr * trust_coefficient * ||w||``: the paper's 0.001 suits large
    batches (large linearly-scaled lr); small-batch recipes use 0.02 (as solo-learn's CIFAR recipes).

    Each group keeps its own ``weight_decay``; ``initial_lr`` (``lr`` x the group's ``"lr_scale"``, default 1:
    Barlow Twins' biases run at 0.024 x the weights' rate) is recorded for the schedule. The fused (CUDA) or
    foreach implementation is used where available.

    Example:
        >>> import torch
        >>> w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
        >>> opt = create_optimizer([{"params": [w]}, {"params": [b], "lr_scale": 0.5}], "lars", lr=0.5)
        >>> type(opt).__name__, [g["initial_lr"] for g in opt.param_groups]
        ('Lars', [0.5, 0.25])
    """
    groups = [dict(g) for g in param_groups if g["params"]]
    for g in groups:
        g.setdefault("weight_decay", weight_decay)
        g["initial_lr"] = g["lr"] = lr * g.get("lr_scale", 1.0)
    on_cuda = any(p.is_cuda for g in groups for p in g["params"])
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=on_cuda or None)
    elif name == "lars":
        from timm.optim import Lars

        opt = Lars(groups, lr=lr, momentum=momentum, trust_coeff=trust_coefficient)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=on_cuda or None)
    else:
        raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return opt


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, final_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warmup from 0 to 1, then cosine decay to ``final_ratio``.

    Example:
        >>> [round(cosine_with_warmup(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Sets each group's lr to ``initial_lr * factor`` (groups with ``fixed_lr`` keep ``initial_lr``)."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] if g.get("fixed_lr") else g["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
