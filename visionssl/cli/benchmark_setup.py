"""What ``visionssl benchmark`` evaluates: its checkpoints (backbones), its datasets, and the machine it ran on.

``visionssl.cli.benchmark.run_benchmark`` turns each checkpoint spec into a named backbone
(``load_benchmark_backbone``, through ``visionssl.zoo.resolve_checkpoint``: a run directory, a checkpoint file, a ``.safetensors`` export, a zoo name, ``random`` or
``random:BACKBONE``), each dataset spec into labelled train/test splits (``load_data``), picks the default input
size from the first run (``run_image_size``) and records the environment in the results (``environment``).

Example:
    >>> from visionssl.cli.benchmark_setup import load_benchmark_backbone
    >>> name, backbone = load_benchmark_backbone("random:resnet18_cifar", ["random:resnet18_cifar"], seed=0)
    >>> name
    'random (resnet18_cifar)'
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionssl.data.dataset import stored_size
from visionssl.errors import ConfigError, DataError

__all__ = ["environment", "load_benchmark_backbone", "load_data", "run_image_size"]


def load_benchmark_backbone(
    spec: str, all_specs: Sequence[str], seed: int, trust_code: bool = False
) -> tuple[str, nn.Module]:
    """(display name, backbone) of a checkpoint spec; ``random`` copies the backbone of the first real one in ``all_specs``."""
    from visionssl.backbones.trust import build_backbone
    from visionssl.zoo import resolve_checkpoint

    spec = str(spec)
    if spec == "random" or spec.startswith("random:"):
        name, kwargs = spec.partition(":")[2], {}
        if not name:
            source = next((s for s in all_specs if not str(s).startswith("random")), None)
            if source is None:
                raise ConfigError(
                    "'random' copies the backbone of the first checkpoint; give one, or use random:BACKBONE"
                )
            resolved = resolve_checkpoint(str(source), trust_code=trust_code)
            name, kwargs = resolved.backbone, resolved.backbone_kwargs
        torch.manual_seed(seed)
        return f"random ({name})", build_backbone(name, kwargs, source=spec)
    return spec, resolve_checkpoint(spec, trust_code=trust_code).build()


def run_image_size(checkpoints: Sequence[str], trust_code: bool = False) -> int | None:
    """``augment.image_size`` of the first checkpoint that is a run, else None (each spec resolved and checked)."""
    from visionssl.zoo import resolve_checkpoint

    for spec in checkpoints:
        if str(spec) == "random" or str(spec).startswith("random:"):
            continue
        source = resolve_checkpoint(str(spec), trust_code=trust_code)
        size = (source.config.get("augment") or {}).get("image_size")
        if source.kind == "run" and size:
            return int(size)
    return None


def load_data(spec: str | tuple[Any, Any], image_size: int) -> tuple[str, Any, Any]:
    """(name, train set, test set) of a ``load_dataset`` spec or a ``(train_set, test_set)`` pair; both need labels."""
    if not isinstance(spec, str):
        train_set, test_set = spec
        return train_set.name, train_set, test_set
    from visionssl.data import load_dataset

    stored = stored_size(image_size)
    train_set, test_set = load_dataset(spec, "train", stored), load_dataset(spec, "test", stored)
    if train_set.targets is None or test_set.targets is None:
        raise DataError(f"dataset {spec!r} has no labels to evaluate with")
    return spec, train_set, test_set


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, threads and library versions, as recorded in ``results.json``."""
    import faiss

    from visionssl import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": name,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "visionssl": __version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
