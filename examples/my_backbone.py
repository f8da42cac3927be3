"""A custom backbone defined in your own file, usable from Python and from the CLI.

Python:  import my_backbone  (registers "tiny_convnet"), then vs.create_method("simclr", backbone="tiny_convnet")
CLI:     visionssl pretrain --backbone examples/my_backbone.py:tiny_convnet --data elpv --out runs/custom
"""

from torch import nn

import visionssl as vs


@vs.register_backbone("tiny_convnet")
def tiny_convnet(width: int = 32, in_chans: int = 3, **_) -> nn.Module:
    """Four conv blocks and global average pooling; returns (B, 4 * width) features."""
    layers, channels = [], in_chans
    for i in range(4):
        out = width * 2 ** min(i, 2)
        layers += [
            nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = channels  # the one attribute visionssl needs
    return net


if __name__ == "__main__":
    from visionssl.engine import Trainer, load_config

    config = load_config(
        "simclr",
        overrides=[
            "backbone.name=tiny_convnet",
            "data.name=synthetic:256",
            "train.epochs=2",
            "optim.batch_size=64",
            "out=runs/custom_python",
        ],
    )
    print(Trainer(config).fit())
