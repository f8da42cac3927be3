"""BYOL (Grill et al., 2020, arXiv 2006.07733): an online network with a predictor regresses the
output of a slowly moving (EMA) target network."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl.losses import negative_cosine
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, head_width, mlp
from visionssl.methods.momentum import MomentumTarget, legacy_target_keys


@register_method("byol")
class BYOL(SSLMethod):
    """BYOL with the paper's defaults: projector and predictor MLPs of 4096 hidden units and 256
    outputs (Linear-BN-ReLU-Linear), target momentum 0.996 -> 1 along a cosine schedule.

    Online: y = backbone(x), z = projector(y), p = predictor(z). Target: an EMA copy of backbone
    and projector that takes no gradient. The loss is the paper's symmetrised regression loss
    L + L~ = mean_i ||p1_i/||p1_i|| - z2'_i/||z2'_i||||^2 + mean_i ||p2_i/||p2_i|| - z1'_i/||z1'_i||||^2,
    i.e. (2 - 2 cos(p1, z2')) + (2 - 2 cos(p2, z1')) averaged over the batch, in [0, 8].

    The target moves after every optimizer step (``on_step_end``) with
    tau = 1 - (1 - 0.996) (cos(pi k / K) + 1) / 2, where k = step - 1 counts the updates already
    made and K = total_steps - 1: the first update uses 0.996 and the last uses exactly 1.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_hidden_dim, proj_dim: projector widths (hidden, output).
        pred_hidden_dim: predictor hidden width (its output is ``proj_dim``).
            A hidden width of None is ``head_width(num_features, 4096)``: 4 x the backbone's features, at
            most the paper's 4096 (see ``visionssl.methods.base.head_width``).
        momentum: tau_base, the target momentum at the first step.
        final_momentum: the momentum at the last step (1.0 in the paper).

    The target network is ``self.target`` (a ``MomentumTarget``: ``target.backbone``, ``target.projector``).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("byol", backbone="resnet10t_cifar", proj_hidden_dim=64, pred_hidden_dim=64)
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> out["loss"].backward(); m.on_step_end(1, 100)
        >>> 0.0 <= float(out["loss"].detach()) <= 8.0, m.target.momentum_at(100, 100)
        (True, 1.0)
    """

    augmentation = "byol"
    num_views = 2
    decay_norm_and_bias = False  # LARS paper: no weight decay on biases and BN parameters

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int | None = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int | None = 4096,
        momentum: float = 0.996,
        final_momentum: float = 1.0,
    ):
        super().__init__(backbone, backbone_kwargs)
        width = head_width(self.num_features, 4096)
        self.projector = mlp(self.num_features, proj_hidden_dim or width, proj_dim)
        self.predictor = mlp(proj_dim, pred_hidden_dim or width, proj_dim)
        self.target = MomentumTarget(momentum, final_momentum, backbone=self.backbone, projector=self.projector)
        self.register_load_state_dict_pre_hook(legacy_target_keys("target_"))

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"BYOL takes 2 views, got {len(views)}")
        x1, x2 = views
        h1 = self.backbone(x1)
        p1 = self.predictor(self.projector(h1))
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            t1 = self.target.projector(self.target.backbone(x1))
            t2 = self.target.projector(self.target.backbone(x2))
        # 2 - 2 cos(p, t) = 2 + 2 * negative_cosine(p, t), per direction
        loss = 4 + 2 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
        return {"loss": loss, "embedding": h1.detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.target.update(self, step, total_steps)
