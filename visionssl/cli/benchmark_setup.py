"""What ``visionssl benchmark`` evaluates: its checkpoints (backbones), its datasets, and the machine it ran on.

``visionssl.cli.benchmark.run_benchmark`` turns each checkpoint spec into a named backbone
(``load_checkpoint``: a run directory, a checkpoint file, a ``.safetensors`` export, a zoo name, ``random`` or
``random:BACKBONE``), each dataset spec into labelled train/test splits (``load_data``), picks the default input
size from the first run (``run_image_size``) and records the environment in the results (``environment``).

Example:
    >>> from visionssl.cli.benchmark_setup import load_checkpoint
    >>> name, backbone = load_checkpoint("random:resnet18_cifar", ["random:resnet18_cifar"], seed=0)
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

__all__ = ["environment", "load_checkpoint", "load_data", "run_image_size"]


def load_checkpoint(spec: str, all_specs: Sequence[str], seed: int, trust_code: bool = False) -> tuple[str, nn.Module]:
    """(display name, backbone) of a checkpoint spec; ``random`` copies the backbone of the first real one in ``all_specs``."""
    from visionssl.backbones.trust import build_backbone

    spec = str(spec)
    if spec == "random" or spec.startswith("random:"):
        name, kwargs = spec.partition(":")[2], {}
        if not name:
            source = next((s for s in all_specs if not str(s).startswith("random")), None)
            if source is None:
                raise ConfigError(
                    "'random' copies the backbone of the first checkpoint; give one, or use random:BACKBONE"
                )
            name, kwargs = _backbone_spec(str(source), trust_code)
        torch.manual_seed(seed)
        return f"random ({name})", build_backbone(name, kwargs, source=spec)
    return spec, _load_backbone(spec, trust_code)


def _load_backbone(spec: str, trust_code: bool = False) -> nn.Module:
    from visionssl import zoo

    return zoo.load_backbone(spec, trust_code=trust_code)  # zoo names, .safetensors exports, runs and checkpoint files


def _backbone_spec(spec: str, trust_code: bool = False) -> tuple[str, dict[str, Any]]:
    """(backbone name, kwargs) of a checkpoint, without building it; checked like any name read from a file."""
    from visionssl.backbones.trust import check_backbone_spec, run_dir_of

    path = Path(spec)
    if path.exists() and path.suffix == ".safetensors":
        from visionssl.zoo import safetensors_backbone

        return safetensors_backbone(path, trust_code=trust_code)
    if path.exists():
        from visionssl.engine.checkpoint import checkpoint_backbone, load_checkpoint

        name, kwargs, _ = checkpoint_backbone(load_checkpoint(path), path)
        return check_backbone_spec(
            name, kwargs, source=f"checkpoint {path}", trust_code=trust_code, run_dir=run_dir_of(path)
        )
    from visionssl import zoo

    entry = zoo.info(spec)
    return check_backbone_spec(
        entry.backbone, entry.backbone_kwargs, source=f"zoo entry {spec!r}", trust_code=trust_code
    )


def run_image_size(checkpoints: Sequence[str]) -> int | None:
    """``augment.image_size`` of the first checkpoint that is a run or checkpoint file, else None."""
    for spec in checkpoints:
        path = Path(str(spec))
        if path.exists() and path.suffix != ".safetensors":
            from visionssl.engine.checkpoint import load_checkpoint

            size = (load_checkpoint(path).get("config", {}).get("augment") or {}).get("image_size")
            if size:
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
