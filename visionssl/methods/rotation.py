"""Rotation prediction (Gidaris et al., 2018, arXiv 1803.07728): which of 0/90/180/270 degrees?"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionssl.augment.pretext import rotate_batch
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp


@register_method("rotation")
class RotationPrediction(SSLMethod):
    """RotNet: every image of the batch is rotated by 0, 90, 180 and 270 degrees on the device (4B
    images in one backbone pass, as the paper found best) and a 4-way classifier on the backbone's
    features predicts the rotation; the loss is the cross entropy averaged over the 4B images.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        head_layers: 1 for a linear classifier on the features, 2+ for an MLP.
        head_hidden_dim: hidden width of the MLP classifier (``head_layers >= 2``).

    Returns (forward): ``loss``, ``embedding`` (features of the unrotated images, detached) and
    ``rotation/accuracy`` (rotation accuracy of the batch, 0-d).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("rotation", backbone="resnet10t_cifar")
        >>> out = m([torch.randn(2, 3, 16, 16)])
        >>> sorted(out), out["embedding"].shape
        (['embedding', 'loss', 'rotation/accuracy'], torch.Size([2, 512]))
    """

    augmentation = "rotation"
    num_views = 1

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        head_layers: int = 1,
        head_hidden_dim: int = 1024,
    ):
        super().__init__(backbone, backbone_kwargs)
        if head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers}")
        self.classifier = mlp(self.num_features, head_hidden_dim, 4, num_layers=head_layers)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 1:
            raise ValueError(f"rotation prediction takes 1 view, got {len(views)}")
        rotated, labels = rotate_batch(views[0])
        features = self.backbone(rotated)
        logits = self.classifier(features)
        return {
            "loss": F.cross_entropy(logits.float(), labels),
            "embedding": features[: views[0].shape[0]].detach(),
            "rotation/accuracy": (logits.argmax(1) == labels).float().mean().detach(),
        }
