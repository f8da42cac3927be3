"""VICReg (Bardes, Ponce & LeCun, 2022, arXiv 2105.04906): variance, invariance and covariance
regularisation of two expanded embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl import distributed
from visionssl.losses import vicreg
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, head_width, mlp


@register_method("vicreg")
class VICReg(SSLMethod):
    """VICReg with the paper's loss weights (25, 25, 1) and a 3-layer expander
    (Linear-BN-ReLU, Linear-BN-ReLU, Linear), all layers ``expander_dim`` wide.

    z = expander(backbone(x)) for each view; the loss is ``vs.losses.vicreg(z1, z2)``. The three
    unweighted terms are returned as ``vicreg/invariance``, ``vicreg/variance`` and
    ``vicreg/covariance`` (detached 0-d tensors, logged by the trainer). The paper trains with LARS.

    Data-parallel training (torchrun): the embeddings of every rank are gathered (with gradients)
    before the loss, so the variance and covariance are those of the global batch, as in the
    reference code; ``train.sync_bn=true`` does the same for the expander's BatchNorm.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        expander_dim: width of every expander layer; None is ``head_width(num_features, 8192)``: 4 x the
            backbone's features, at most the paper's 8192 (8192 for a ResNet-50, solo-learn's CIFAR 2048 for a
            ResNet-18; see ``visionssl.methods.base.head_width``).
        expander_layers: number of linear layers in the expander.
        sim_weight, var_weight, cov_weight: lambda, mu and nu of the loss.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("vicreg", backbone="resnet10t_cifar")
        >>> m.expander[-1].out_features
        2048
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> sorted(k for k in out if k.startswith("vicreg/"))
        ['vicreg/covariance', 'vicreg/invariance', 'vicreg/variance']
    """

    augmentation = "vicreg"
    num_views = 2
    decay_norm_and_bias = False  # LARS paper: no weight decay on biases and BN parameters

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        expander_dim: int | None = None,
        expander_layers: int = 3,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
    ):
        super().__init__(backbone, backbone_kwargs)
        if expander_dim is None:
            expander_dim = head_width(self.num_features, 8192)
        self.weights = {"sim_weight": sim_weight, "var_weight": var_weight, "cov_weight": cov_weight}
        self.expander = mlp(self.num_features, expander_dim, expander_dim, num_layers=expander_layers)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"VICReg takes 2 views, got {len(views)}")
        x1, x2 = views
        h1 = self.backbone(x1)
        z1, z2 = self.expander(h1), self.expander(self.backbone(x2))
        # the global batch's statistics: every rank computes the loss of all ranks' embeddings
        z1, z2 = distributed.all_gather_with_grad(z1), distributed.all_gather_with_grad(z2)
        loss, terms = vicreg(z1, z2, **self.weights, return_terms=True)
        out = {"loss": loss, "embedding": h1.detach()}
        out.update({f"vicreg/{name}": value.detach() for name, value in terms.items()})
        return out
