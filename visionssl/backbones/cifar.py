"""Small-image (CIFAR-stem) variants of timm ResNets: a 3x3 stride-1 stem and no max-pool.

They are registered with the same public decorator a user would use.

Example:
    >>> import torch, visionssl as vs
    >>> vs.create_backbone("resnet50_cifar")(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 2048])
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from visionssl.backbones import register_backbone


def cifar_resnet(timm_name: str, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """A timm ResNet with its 7x7/2 stem and max-pool replaced by one 3x3/1 convolution."""
    net = timm.create_model(timm_name, num_classes=0, pretrained=False, in_chans=in_chans, **kwargs)
    width = net.conv1.out_channels
    net.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@register_backbone("resnet18_cifar")
def resnet18_cifar(**kwargs: Any) -> nn.Module:
    """ResNet-18 for 32-96 px images (512-d features)."""
    return cifar_resnet("resnet18", **kwargs)


@register_backbone("resnet34_cifar")
def resnet34_cifar(**kwargs: Any) -> nn.Module:
    """ResNet-34 for 32-96 px images (512-d features)."""
    return cifar_resnet("resnet34", **kwargs)


@register_backbone("resnet50_cifar")
def resnet50_cifar(**kwargs: Any) -> nn.Module:
    """ResNet-50 for 32-96 px images (2048-d features)."""
    return cifar_resnet("resnet50", **kwargs)


@register_backbone("resnet10t_cifar")
def resnet10t_cifar(**kwargs: Any) -> nn.Module:
    """A light ResNet-10 (timm ``resnet10t``, deep stem at stride 1, no max-pool) for quick CPU runs."""
    net = timm.create_model("resnet10t", num_classes=0, pretrained=False, **kwargs)
    net.conv1[0].stride = (1, 1)
    net.maxpool = nn.Identity()
    return net
