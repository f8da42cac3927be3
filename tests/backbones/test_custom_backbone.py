"""The README's custom-backbone example, trained from Python and from the CLI."""

import subprocess
import sys
from pathlib import Path

import torch

import visionssl as vs
from visionssl.registry import import_object

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_backbone.py"
TINY = [
    "data.name=synthetic:64",
    "data.image_size=16",
    "augment.image_size=16",
    "optim.batch_size=32",
    "method.proj_hidden_dim=32",
    "train.progress=false",
    "train.knn_every=0",
]


def test_custom_backbone_from_python(tmp_path):
    factory = import_object(f"{EXAMPLE}:tiny_convnet")  # what `import my_backbone` does: registers it
    assert "tiny_convnet" in vs.list_backbones("tiny*")
    assert factory(width=4)(torch.randn(2, 3, 16, 16)).shape == (2, 16)
    from visionssl.engine import Trainer, load_config

    cfg = load_config(
        "simclr",
        overrides=TINY + ["backbone.name=tiny_convnet", "backbone.kwargs.width=4", "train.epochs=1", f"out={tmp_path}"],
    )
    result = Trainer(cfg).fit()
    assert result["step"] == 2 and "knn/top1" in result


def test_custom_backbone_from_the_cli(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "visionssl",
        "pretrain",
        "--backbone",
        f"{EXAMPLE}:tiny_convnet",
        "--epochs",
        "1",
        "--out",
        str(out),
        *TINY,
        "backbone.kwargs.width=4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kNN top-1" in done.stdout
    backbone = vs.zoo.load_backbone(out)  # the run remembers the file, so it loads from anywhere
    assert backbone.num_features == 16
