"""MoCo v3 (Chen, Xie & He, 2021, arXiv 2104.02057): a query encoder with a predictor against a
momentum key encoder, symmetric InfoNCE over the keys of the batch (no queue)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl.losses import infonce
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp
from visionssl.methods.momentum import MomentumTarget, legacy_target_keys


@register_method("mocov3")
class MoCoV3(SSLMethod):
    """MoCo v3: projector (Linear-BN-ReLU x (L - 1), Linear, BN without affine) and predictor
    (Linear-BN-ReLU, Linear, and on a ViT a last BN without affine), 4096 hidden and 256 out, every Linear
    without bias (the official ``MoCo_ResNet`` / ``MoCo_ViT._build_projector_and_predictor_mlps``), keys from an EMA copy of backbone + projector
    (``self.target``, a ``MomentumTarget``) whose momentum rises from ``momentum`` to ``final_momentum`` along a
    cosine schedule.

    loss = infonce(p1, k2) + infonce(p2, k1), each 2T x the InfoNCE of the queries against the
    batch's keys. Data-parallel training: the keys of every rank are gathered, so each query meets
    the keys of the global batch, as in the paper.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_hidden_dim, proj_dim: projector widths (hidden, output).
        proj_layers: projector depth; the paper uses 2 for ResNets and 3 for ViTs.
        pred_hidden_dim: predictor hidden width (its output is ``proj_dim``).
        pred_last_bn: end the predictor in a BatchNorm without affine; None: on a ViT (a backbone with
            ``patch_embed``) only, as the official code.
        temperature: T; 0.2 for ViTs (the paper), 1.0 in the reference ResNet-50 recipe.
        momentum: key-encoder momentum at the first step.
        final_momentum: its momentum at the last step (1.0 in the paper), reached along a cosine.
        freeze_patch_embed: for ViTs, keep the patch projection at its random initialisation
            (the paper's fix for training instability); needs a backbone with ``patch_embed``.

    Parameter groups as the official optimisers: on a ResNet (LARS) biases and BN parameters take no weight
    decay and no LARS adaptation; on a ViT (AdamW over every parameter) everything is decayed.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("mocov3", backbone="resnet10t_cifar", proj_hidden_dim=64, pred_hidden_dim=64)
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> out["loss"].backward(); m.on_step_end(1, 100)
        >>> tuple(out["embedding"].shape)
        (4, 512)
    """

    augmentation = "byol"  # the paper's views are BYOL's (Chen et al., 2021, section 4)
    num_views = 2

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        proj_layers: int = 2,
        pred_hidden_dim: int = 4096,
        pred_last_bn: bool | None = None,
        temperature: float = 0.2,
        momentum: float = 0.99,
        final_momentum: float = 1.0,
        freeze_patch_embed: bool = False,
    ):
        super().__init__(backbone, backbone_kwargs)
        if freeze_patch_embed:
            patch_embed = getattr(self.backbone, "patch_embed", None)
            if patch_embed is None:
                raise ValueError(
                    "freeze_patch_embed=True needs a ViT backbone (a module with .patch_embed); "
                    f"{type(self.backbone).__name__} has none"
                )
            patch_embed.requires_grad_(False)
        self.temperature = temperature
        vit = getattr(self.backbone, "patch_embed", None) is not None
        self.decay_norm_and_bias = vit
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers, last_bn=True)
        last_bn = vit if pred_last_bn is None else pred_last_bn
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim, last_bn=last_bn, bias=False)
        self.target = MomentumTarget(momentum, final_momentum, backbone=self.backbone, projector=self.projector)
        self.register_load_state_dict_pre_hook(legacy_target_keys("momentum_"))

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"MoCo v3 takes 2 views, got {len(views)}")
        x1, x2 = views
        h1 = self.backbone(x1)
        p1 = self.predictor(self.projector(h1))
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            k1 = self.target.projector(self.target.backbone(x1))
            k2 = self.target.projector(self.target.backbone(x2))
        t = self.temperature
        loss = infonce(p1, k2, t, gather_distributed=True) + infonce(p2, k1, t, gather_distributed=True)
        return {"loss": loss, "embedding": h1.detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.target.update(self, step, total_steps)
