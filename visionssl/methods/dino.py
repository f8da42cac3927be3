"""DINO (Caron et al., 2021, arXiv 2104.14294): a student matches the centred, sharpened output of
an EMA teacher across multi-crop views."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionssl.losses import dino, dino_center
from visionssl.methods import register_method
from visionssl.methods.epoch_schedule import EpochScheduledMethod, scale_grad
from visionssl.methods.momentum import MomentumTarget, legacy_target_keys
from visionssl.methods.swav import encode_crops


class DINOHead(nn.Module):
    """MLP (Linear-GELU x (layers - 1), Linear to ``bottleneck_dim``), L2 normalisation, and a
    weight-normalised linear layer without bias to ``out_dim`` (its rows kept at unit norm when
    ``norm_last_layer``, as the paper's ViT recipe)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.norm_last_layer = norm_last_layer
        self.last_layer_grad_scale = 1.0  # 0 while the last layer is frozen
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():  # unit rows, as the official weight_norm with its gain filled with 1
            self.last_layer.weight.copy_(F.normalize(self.last_layer.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        w = scale_grad(self.last_layer.weight, self.last_layer_grad_scale)
        return x @ (F.normalize(w, dim=1) if self.norm_last_layer else w).T


@register_method("dino")
class DINO(EpochScheduledMethod):
    """DINO with the paper's defaults: head 2048 hidden, 256 bottleneck, 65536 outputs; student
    temperature 0.1; teacher temperature warmed up linearly from 0.04 to ``teacher_temp`` over 30 epochs;
    center momentum 0.9; teacher momentum 0.996 -> 1 along a cosine; last layer frozen in the first epoch.

    Views: 2 global crops first, then local crops (the ``multicrop`` preset). The student sees every
    crop (the backbone once per crop size, the head once on all crops concatenated), the teacher (an EMA copy of backbone and head, no gradient) the global crops only. The center
    is a buffer updated after each training forward pass with the mean teacher output of the global
    batch (all-reduced under several processes).

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module; ViTs at small images
            need ``img_size``/``patch_size``; a timm ViT built by name gets ``dynamic_img_size=True`` for the local
            crops (a built one without it is refused with a ConfigError at the first step).
        out_dim, hidden_dim, bottleneck_dim, head_layers, norm_last_layer: the head (see ``DINOHead``).
        student_temp: the student's temperature.
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: the teacher's temperature schedule.
        center_momentum: EMA momentum of the center.
        momentum: the teacher's momentum at the first step.
        final_momentum: the teacher's momentum at the last step (1.0 in the paper), reached along a cosine.
        freeze_last_layer_epochs: epochs during which the head's last layer takes no gradient.

    The teacher is ``self.target`` (a ``MomentumTarget``, as the momentum copies of MoCo and BYOL:
    ``target.backbone``, ``target.head``).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("dino", backbone="resnet10t_cifar", out_dim=32, hidden_dim=32, bottleneck_dim=16)
        >>> out = m([torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2)
        >>> out["loss"].backward(); m.on_step_end(1, 100)
        >>> tuple(m.center.shape), float(m.teacher_temperature())
        ((1, 32), 0.04)
    """

    augmentation = "multicrop"
    num_views = 8
    multi_size_views = True
    decay_norm_and_bias = False  # the official get_params_groups: no decay on biases and norms

    center: torch.Tensor

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        final_momentum: float = 1.0,
        freeze_last_layer_epochs: float = 1,
    ):
        super().__init__(backbone, backbone_kwargs)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp, self.warmup_teacher_temp_epochs = warmup_teacher_temp, warmup_teacher_temp_epochs
        self.center_momentum = center_momentum
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.head = DINOHead(self.num_features, out_dim, hidden_dim, bottleneck_dim, head_layers, norm_last_layer)
        self.target = MomentumTarget(momentum, final_momentum, backbone=self.backbone, head=self.head)
        self.register_load_state_dict_pre_hook(legacy_target_keys("teacher_"))
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self) -> float:
        """Linear warm-up over whole epochs (the paper's per-epoch schedule), then ``teacher_temp``."""
        epoch, warmup = math.floor(self.epoch), self.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * epoch / max(warmup - 1, 1)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError(f"DINO takes 2 global crops of one size and then local crops, got {len(views)} view(s)")
        self.head.last_layer_grad_scale = 0.0 if self.training and self.epoch < self.freeze_last_layer_epochs else 1.0
        feats = encode_crops(self.backbone, views, "DINO")
        student = list(self.head(feats).split([len(v) for v in views]))
        with torch.no_grad():
            teacher = list(self.target.head(self.target.backbone(torch.cat(views[:2]))).chunk(2))
        loss = dino(student, teacher, self.center, self.student_temp, self.teacher_temperature())
        if self.training:
            self.center.copy_(dino_center(self.center, teacher, self.center_momentum, gather_distributed=True))
        return {"loss": loss, "embedding": feats[: len(views[0])].detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        super().on_step_end(step, total_steps)
        self.target.update(self, step, total_steps)
