"""Checkpoints: atomic writes, safe loads, and the backbone out of a run.

A visionssl checkpoint is a ``dict`` saved with ``torch.save``:

    format       "visionssl"          version   1
    config       the resolved run config (plain dict; ``config["backbone"]`` has ``name`` and ``kwargs``)
    method       ``method.state_dict()``  (backbone weights under the ``backbone.`` prefix)
    optimizer, scheduler, scaler          state dicts (absent in exported files)
    epoch, step  progress: the number of finished epochs and optimizer steps
    rng          torch / numpy / python RNG states
    metrics      the last logged metrics
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = "visionssl"
LAST = "last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: truncated, not ours, or carrying code."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never half of one.

    Example:
        >>> import tempfile, torch
        >>> p = atomic_save({"x": torch.ones(2)}, tempfile.mkdtemp() + "/a.pt")
        >>> load_checkpoint(p)["x"].tolist()
        [1.0, 1.0]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"could not write checkpoint {path}: {exc.strerror or exc}") from exc
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True``: tensors and plain containers, never code.

    Raises ``CheckpointError`` naming the file when it is missing, truncated or unsafe.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / LAST if (path / "checkpoints").is_dir() else path / LAST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain containers, "
            f"and unpickling them could run code ({detail or 'unsupported global'})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): {exc}") from None


def backbone_state_dict(method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.``-prefixed entries of a method's state dict, prefix removed."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in method_state.items() if k.startswith(prefix)}


def load_backbone(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuilds the backbone of a visionssl checkpoint (file or run directory), weights loaded strictly.

    Example (with a run made by ``visionssl pretrain --out runs/demo``):
        >>> backbone = load_backbone("runs/demo")  # doctest: +SKIP
    """
    from visionssl.backbones import create_backbone

    ckpt = load_checkpoint(path, map_location)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a visionssl checkpoint (no format='visionssl' field)")
    spec = ckpt["config"]["backbone"]
    backbone = create_backbone(spec["name"], **(spec.get("kwargs") or {}))
    backbone.load_state_dict(backbone_state_dict(ckpt["method"]), strict=True)
    return backbone.to(map_location)
