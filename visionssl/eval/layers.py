"""Features of an intermediate stage: evaluate a backbone at ``layer="stage3"`` instead of its last layer.

Pretext-task features are often best in a middle stage (RotNet reports conv block 2; VISSL and
mmselfsup evaluate ResNet's res2-res5), since the last stage specialises in the pretext task. Any
backbone with timm's ``feature_info`` (every timm model, and the CIFAR-stem ResNets of
``visionssl.backbones.cifar``) has stages named ``stage0`` ... ``stageN``, in the order of its
``feature_info`` (timm's ``out_indices``): for a ResNet ``stage0`` is the stem and ``stage1``-``stage4``
are ``layer1``-``layer4``. ``final`` is the backbone's own pooled output.

Example:
    >>> import torch, visionssl as vs
    >>> net = vs.create_backbone("resnet10t_cifar")
    >>> stage_names(net)
    ['final', 'stage0', 'stage1', 'stage2', 'stage3', 'stage4']
    >>> StageFeatures(net, "stage3")(torch.randn(2, 3, 32, 32)).shape  # ResNet layer3
    torch.Size([2, 256])
"""

from __future__ import annotations

import torch
from torch import nn

from visionssl.errors import ConfigError

__all__ = ["StageFeatures", "stage_names", "with_layer"]


def _feature_info(backbone: nn.Module) -> list[dict]:
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return []
    return list(info.info) if hasattr(info, "info") else list(info)  # timm's FeatureInfo or a plain list


def stage_names(backbone: nn.Module) -> list[str]:
    """``final`` and one ``stage<i>`` per entry of the backbone's ``feature_info`` (none without one).

    Example:
        >>> stage_names(torch.nn.Linear(2, 2))
        ['final']
    """
    return ["final"] + [f"stage{i}" for i in range(len(_feature_info(backbone)))]


class StageFeatures(nn.Module):
    """A backbone read at one stage: the stage's output, globally average-pooled, (B, channels).

    The backbone runs whole (a forward hook keeps the stage's output), so any ``feature_info`` works;
    token outputs (B, N, C) are averaged over the tokens.

    Example:
        >>> import visionssl as vs
        >>> StageFeatures(vs.create_backbone("resnet10t_cifar"), "stage9")
        Traceback (most recent call last):
        ...
        visionssl.errors.ConfigError: unknown layer 'stage9'; valid: final, stage0, stage1, stage2, stage3, stage4
    """

    def __init__(self, backbone: nn.Module, layer: str):
        super().__init__()
        names = stage_names(backbone)
        if layer not in names or layer == "final":
            hint = "" if len(names) > 1 else " (this backbone has no timm feature_info, so only its final output)"
            raise ConfigError(f"unknown layer {layer!r}; valid: {', '.join(names)}{hint}")
        info = _feature_info(backbone)[int(layer[len("stage") :])]
        self.backbone, self.layer = backbone, layer
        self.num_features = int(info["num_chs"])
        self._stage = backbone.get_submodule(info["module"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        handle = self._stage.register_forward_hook(lambda _m, _i, out: kept.append(out))
        try:
            self.backbone(x)
        finally:
            handle.remove()
        out = kept[-1]
        return out.mean((2, 3)) if out.ndim == 4 else out.mean(1) if out.ndim == 3 else out


def with_layer(backbone: nn.Module, layer: str | None) -> nn.Module:
    """``backbone`` itself for ``None`` or ``"final"``, else ``StageFeatures(backbone, layer)``.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> with_layer(net, "final") is net
        True
    """
    return backbone if layer in (None, "final") else StageFeatures(backbone, layer)
