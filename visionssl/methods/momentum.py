"""Momentum (EMA) target networks shared by MoCo, BYOL, MoCo v3 and DINO: copy, update, schedule.

``MomentumTarget`` is the one object those methods hold (``method.target``): the frozen copies and their schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def copy_frozen(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient (a momentum/target network).

    The copy stays in the same train/eval mode as its parent method, so its BatchNorm layers use
    batch statistics in training, as in MoCo and BYOL.

    Example:
        >>> online = torch.nn.Linear(3, 2)
        >>> target = copy_frozen(online)
        >>> torch.equal(target.weight, online.weight), target.weight.requires_grad
        (True, False)
    """
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place, for every parameter: target <- momentum * target + (1 - momentum) * online.

    Only parameters move; buffers (BatchNorm running statistics) of the target are its own,
    updated by its forward passes. ``momentum = 1`` leaves the target unchanged, ``0`` copies.

    Example:
        >>> online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = online.weight.fill_(4.0), target.weight.fill_(0.0)
        >>> ema_update_(target, online, momentum=0.75)
        >>> target.weight.tolist()
        [[1.0, 1.0]]
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    target_params, online_params = list(target.parameters()), list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError(f"target and online networks differ: {len(target_params)} vs {len(online_params)} parameters")
    # lerp: t + (1 - m) (o - t), one fused kernel per device and dtype
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


def cosine_momentum(step: float, total_steps: float, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule: tau = final - (final - base) * (cos(pi * step / total_steps) + 1) / 2.

    ``base`` at step 0, ``final`` at ``step = total_steps`` (steps beyond are clamped). With
    ``final = 1`` this is the paper's tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.

    Example:
        >>> cosine_momentum(0, 100), cosine_momentum(50, 100), cosine_momentum(100, 100)
        (0.996, 0.998, 1.0)
    """
    progress = min(max(step / total_steps, 0.0), 1.0) if total_steps > 0 else 1.0
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def momentum_at(step: int, total_steps: int, base: float, final: float | None = None) -> float:
    """The momentum after optimizer step ``step`` (counted from 1) of ``total_steps``: ``base`` throughout
    when ``final`` is None, else ``cosine_momentum`` from ``base`` (step 1) to ``final`` (the last step).

    Example:
        >>> momentum_at(1, 101, 0.99), momentum_at(101, 101, 0.99, 1.0), momentum_at(7, 101, 0.999)
        (0.99, 1.0, 0.999)
    """
    return base if final is None else cosine_momentum(step - 1, total_steps - 1, base, final)


def ema_step_(
    pairs: Iterable[tuple[nn.Module, nn.Module]], step: int, total_steps: int, base: float, final: float | None = None
) -> float:
    """The EMA update after an optimizer step, for every ``(target, online)`` pair; returns the momentum used.

    One home for the momentum encoders of MoCo, BYOL, MoCo v3 and DINO (their ``on_step_end``).

    Example:
        >>> online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = online.weight.fill_(4.0), target.weight.fill_(0.0)
        >>> ema_step_([(target, online)], step=1, total_steps=10, base=0.75)
        0.75
        >>> target.weight.tolist()
        [[1.0, 1.0]]
    """
    momentum = momentum_at(step, total_steps, base, final)
    for target, online in pairs:
        ema_update_(target, online, momentum)
    return momentum


class MomentumTarget(nn.Module):
    """The momentum (EMA) copies of some of a method's modules, and their schedule: MoCo's key encoder,
    BYOL's target network, DINO's teacher all are a ``MomentumTarget`` held as ``method.target``.

    ``MomentumTarget(momentum, final_momentum, backbone=method.backbone, projector=method.projector)`` holds a
    frozen copy (``copy_frozen``) of each module under the same name, so a checkpoint's ``target.backbone.*``
    mirrors ``backbone.*``. ``update(method, step, total_steps)``, called from the method's ``on_step_end``,
    moves each copy towards the module of that name on ``method`` with ``momentum_at`` (``momentum`` throughout
    when ``final_momentum`` is None, else a cosine from ``momentum`` at the first step to ``final_momentum`` at
    the last) and returns the momentum used.

    Example:
        >>> online = torch.nn.Module(); online.backbone = torch.nn.Linear(2, 1)
        >>> target = MomentumTarget(0.5, None, backbone=online.backbone)
        >>> with torch.no_grad():
        ...     _ = online.backbone.weight.fill_(2.0), target.backbone.weight.fill_(0.0)
        >>> target.update(online, step=1, total_steps=10), target.backbone.weight.tolist()
        (0.5, [[1.0, 1.0]])
        >>> sorted(target.state_dict())
        ['backbone.bias', 'backbone.weight']
    """

    def __init__(self, momentum: float, final_momentum: float | None = None, **modules: nn.Module):
        super().__init__()
        if not modules:
            raise ValueError("MomentumTarget needs at least one module to copy")
        self.momentum, self.final_momentum = momentum, final_momentum
        for name, module in modules.items():
            self.add_module(name, copy_frozen(module))

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The momentum of the update after optimizer step ``step`` (counted from 1) of ``total_steps``."""
        return momentum_at(step, total_steps, self.momentum, self.final_momentum)

    def update(self, online: nn.Module, step: int, total_steps: int) -> float:
        """EMA-updates every copy towards ``online``'s module of the same name; returns the momentum used."""
        pairs = [(copy, online.get_submodule(name)) for name, copy in self.named_children()]
        return ema_step_(pairs, step, total_steps, self.momentum, self.final_momentum)


def legacy_target_keys(*old_prefixes: str) -> Any:
    """A ``load_state_dict`` pre-hook for a method whose momentum copies had their own attributes before
    ``MomentumTarget`` (``target_backbone``, ``teacher_head``, ``momentum_projector``): it renames the
    checkpoint's ``<old>_<name>.*`` keys to ``target.<name>.*``, so checkpoints of earlier runs still resume.

    Example:
        >>> state = {"teacher_head.w": 1, "head.w": 2}
        >>> legacy_target_keys("teacher_")(None, state, "")
        >>> state
        {'head.w': 2, 'target.head.w': 1}
    """

    def hook(module: nn.Module | None, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            old = next((p for p in old_prefixes if rest.startswith(p)), None)
            if old is not None:
                state_dict[f"{prefix}target.{rest[len(old) :]}"] = state_dict.pop(key)

    return hook
