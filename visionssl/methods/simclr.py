"""SimCLR (Chen et al., 2020, arXiv 2002.05709): two augmented views, an MLP projection, NT-Xent."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl.losses import nt_xent
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp


@register_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR with the paper's defaults: a 2-layer MLP head (2048 hidden, 128 out), T = 0.5.

    Under data-parallel training (torchrun) each image is contrasted with the embeddings of the whole
    global batch, gathered from every rank with gradients, as in the paper; ``train.sync_bn=true``
    also computes the BatchNorm statistics over the global batch (the paper's global BN).

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_hidden_dim: width of the projection head's hidden layer.
        proj_dim: output size of the projection head.
        proj_layers: number of linear layers in the head (SimCLR v2 uses 3).
        temperature: NT-Xent temperature.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("simclr", backbone="resnet18_cifar", proj_dim=64)
        >>> out = m([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
        >>> sorted(out)
        ['embedding', 'loss']
    """

    augmentation = "simclr"
    num_views = 2
    decay_norm_and_bias = False  # LARS paper: no weight decay on biases and BN parameters

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 2,
        temperature: float = 0.5,
    ):
        super().__init__(backbone, backbone_kwargs)
        self.temperature = temperature
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_dim, num_layers=proj_layers)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}")
        h = self.backbone(torch.cat(views))  # one pass: BN statistics over both views
        z1, z2 = self.projector(h).chunk(2)
        loss = nt_xent(z1, z2, self.temperature, gather_distributed=True)  # negatives from every rank
        return {"loss": loss, "embedding": h.detach()}
