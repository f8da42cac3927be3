"""Barlow Twins (Zbontar et al., 2021, arXiv 2103.03230): the cross-correlation of two views'
embeddings is driven to the identity."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl import distributed
from visionssl.losses import barlow_twins
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, head_width, mlp


@register_method("barlow_twins")
class BarlowTwins(SSLMethod):
    """Barlow Twins with the paper's loss weight lambda = 0.0051 and a 3-layer projector
    (Linear-BN-ReLU, Linear-BN-ReLU, Linear without bias), every layer ``proj_dim`` wide.

    Parameter groups as the official code: biases and BN parameters take no weight decay and no LARS
    adaptation, and 0.024 x the learning rate (the paper's 0.0048 for biases against 0.2 for weights).

    Data-parallel training (torchrun): the projections of every rank are gathered with gradients
    before the loss, so the normalisation and the cross-correlation are those of the global batch.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_dim: width of every projector layer; None is ``head_width(num_features, 8192)``: 4 x the
            backbone's features, at most the paper's 8192 (8192 for a ResNet-50, solo-learn's CIFAR 2048 for a
            ResNet-18; see ``visionssl.methods.base.head_width``).
        proj_layers: number of linear layers in the projector.
        lambd: weight of the redundancy-reduction term.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("barlow_twins", backbone="resnet10t_cifar")
        >>> m.projector[-1].out_features
        2048
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]); out["loss"].backward()
    """

    augmentation = "byol"  # the paper's views are BYOL's (Zbontar et al., 2021, appendix A)
    num_views = 2
    # the official main.py: biases and BN parameters without weight decay or LARS adaptation, at 0.0048 / 0.2 of the lr
    decay_norm_and_bias = False
    norm_and_bias_lr_scale = 0.024

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_dim: int | None = None,
        proj_layers: int = 3,
        lambd: float = 0.0051,
    ):
        super().__init__(backbone, backbone_kwargs)
        if proj_dim is None:
            proj_dim = head_width(self.num_features, 8192)
        self.lambd = lambd
        self.projector = mlp(self.num_features, proj_dim, proj_dim, num_layers=proj_layers)
        last = self.projector[-1]  # no bias, as the reference code: the batch normalisation of the loss removes it
        self.projector[-1] = nn.Linear(last.in_features, last.out_features, bias=False)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"Barlow Twins takes 2 views, got {len(views)}")
        x1, x2 = views
        h1 = self.backbone(x1)
        z1, z2 = self.projector(h1), self.projector(self.backbone(x2))
        z1, z2 = distributed.all_gather_with_grad(z1), distributed.all_gather_with_grad(z2)  # the global batch
        return {"loss": barlow_twins(z1, z2, self.lambd), "embedding": h1.detach()}
