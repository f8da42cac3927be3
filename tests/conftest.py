"""Shared test settings and helpers.

Helpers live here once and are imported by the test files (``from conftest import TinyNet``; pytest puts
``tests/`` on ``sys.path``), or taken as fixtures (``tiny_net``).
"""

import os

# Idle OpenMP threads sleep instead of spinning: several test processes share 2 cores (7x faster here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(int(os.environ.get("VISIONSSL_TEST_THREADS", "2")))


class TinyNet(nn.Sequential):
    """A two-convolution backbone with BatchNorm (``num_features = 2 * width``): method logic is tested on it,
    the ResNets only for fit. ``stride`` is the first convolution's (the second always halves the size)."""

    def __init__(self, in_chans: int = 3, width: int = 8, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_chans, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 2 * width


TINY_BACKBONE_SOURCE = """  # a user's own backbone file (``FILE.py:tiny``): code a run names
from torch import nn


def tiny(**kw):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    net.num_features = 8
    return net
"""


def local_zoo_entry(name: str, backbone: str, weights, **fields) -> dict:
    """A zoo entry (as a zoo YAML file holds it) for a local ``visionssl``-format weights file, its sha256 and size
    filled in; ``fields`` add or replace keys (``backbone_kwargs``, ...)."""
    from visionssl.zoo import sha256_file

    return {
        "name": name,
        "method": "simclr",
        "backbone": backbone,
        "urls": [str(weights)],
        "sha256": sha256_file(weights),
        "size": weights.stat().st_size,
        "format": "visionssl",
        "recipe": {"dataset": None, "epochs": None, "batch_size": None},
        "metrics": [],
        "paper": None,
        "license": None,
        **fields,
    }


@pytest.fixture
def tiny_net():
    """The ``TinyNet`` class, for tests that build one or more tiny backbones."""
    return TinyNet


@pytest.fixture
def private_home(tmp_path, monkeypatch):
    """``VISIONSSL_HOME`` in a temp dir: caches (e.g. jigsaw permutation sets) are written there, not in ~."""
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def load_benchmark(monkeypatch):
    """Imports ``benchmarks/<name>.py`` as a module (with benchmarks/ on the path, for its ``_common`` import);
    the benchmark helpers it imported are forgotten afterwards, so each test sees fresh module state."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    for name, module in list(sys.modules.items()):  # every benchmark module it imported, helpers included
        if Path(getattr(module, "__file__", None) or "/").parent == folder:
            sys.modules.pop(name)
