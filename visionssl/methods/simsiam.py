"""SimSiam (Chen & He, 2021, arXiv 2011.10566): a Siamese network with a predictor and a stop-gradient,
no negatives and no momentum encoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl.losses import negative_cosine
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp


@register_method("simsiam")
class SimSiam(SSLMethod):
    """SimSiam with the paper's defaults: a 3-layer projector (2048 wide, BatchNorm on every layer,
    the output one without affine), a 2-layer predictor with a 512 bottleneck, and the predictor
    trained at a fixed learning rate.

    z = projector(backbone(x)), p = predictor(z); the loss is
    L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D the negative cosine similarity
    (``negative_cosine``, which applies the stop-gradient), in [-1, 1].

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_hidden_dim, proj_dim: projector widths (hidden, output).
        proj_layers: linear layers in the projector (3 on ImageNet, 2 in the paper's CIFAR runs).
        pred_hidden_dim: the predictor's bottleneck width.
        fixed_predictor_lr: keep the predictor's learning rate constant (no warmup or decay): its
            optimizer group carries ``"fixed_lr": True``; the paper's released recipe does this.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("simsiam", backbone="resnet10t_cifar", proj_hidden_dim=64, proj_dim=64,
        ...                      pred_hidden_dim=16)
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> out["loss"].backward()
        >>> [g.get("fixed_lr", False) for g in m.param_groups(1e-4)]
        [False, False, True, True]
    """

    augmentation = "simsiam"
    num_views = 2

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        proj_layers: int = 3,
        pred_hidden_dim: int = 512,
        fixed_predictor_lr: bool = True,
    ):
        super().__init__(backbone, backbone_kwargs)
        self.fixed_predictor_lr = fixed_predictor_lr
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers, last_bn=True)
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"SimSiam takes 2 views, got {len(views)}")
        x1, x2 = views
        h1 = self.backbone(x1)
        z1, z2 = self.projector(h1), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return {"loss": loss, "embedding": h1.detach()}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The base groups (decay / no decay); with ``fixed_predictor_lr`` the predictor's parameters
        move to groups of their own marked ``"fixed_lr": True``."""
        groups = super().param_groups(weight_decay)
        if not self.fixed_predictor_lr:
            return groups
        predictor = {id(p) for p in self.predictor.parameters()}
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in predictor]} for g in groups]
        fixed = [{**g, "params": [p for p in g["params"] if id(p) in predictor], "fixed_lr": True} for g in groups]
        return rest + fixed
