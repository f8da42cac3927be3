"""The small custom backbones of the benchmarks on small data, registered as ``peer_cnn`` and ``peer_resnet``.

Example:
    >>> import _small_backbones, visionssl as vs
    >>> vs.create_backbone("peer_resnet").num_features
    128
"""

from __future__ import annotations

import torch
from torch import nn

import visionssl as vs

BACKBONES = ("peer_cnn", "peer_resnet")  # the small custom backbones; any registered or timm name works too


@vs.register_backbone("peer_cnn", override=True)  # override: tests load this script more than once
def peer_cnn(**_) -> nn.Module:
    """A small custom CNN (four conv-BN-ReLU blocks of 32-64-128-256 channels, 0.39M parameters; 256-d
    features): ``--backbone peer_cnn``."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    net = nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.MaxPool2d(2),
        *block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    net.num_features = 256
    return net


@vs.register_backbone("peer_resnet", override=True)
def peer_resnet(**_) -> nn.Module:
    """A second small custom backbone of another kind than ``peer_cnn``: a 3x3 stem of 32 channels and three
    stages of one residual block each (32, 64, 128 channels, the last two at stride 2; 0.31M parameters;
    128-d features): ``--backbone peer_resnet``."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip = (
                nn.Identity()
                if stride == 1 and cin == cout
                else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        Block(32, 32, 1),
        Block(32, 64, 2),
        Block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    net.num_features = 128
    return net
