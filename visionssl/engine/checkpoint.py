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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionssl.errors import CheckpointError  # noqa: F401  (re-exported)
from visionssl.files import atomic_write, remove_stale_temp_files  # noqa: F401  (remove_stale_temp_files: re-exported)

CHECKPOINT_FORMAT = "visionssl"
LAST = "last.pt"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never half of one. A failed
    write (disk full, read-only folder) removes the temporary file, leaves the old ``path`` as it
    was and raises ``OSError`` naming ``path`` (with the free space when the disk is full).

    Example:
        >>> import tempfile, torch
        >>> p = atomic_save({"x": torch.ones(2)}, tempfile.mkdtemp() + "/a.pt")
        >>> load_checkpoint(p)["x"].tolist()
        [1.0, 1.0]
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Writes a text file atomically (temporary file, fsync, rename), like ``atomic_save``.

    Example:
        >>> import tempfile
        >>> atomic_write_text("epochs: 3\\n", tempfile.mkdtemp() + "/config.yaml").read_text()
        'epochs: 3\\n'
    """
    return atomic_write(path, text)


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
        unsafe = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects other than tensors and plain containers, "
                f"and unpickling them could run code ({unsafe}); load only checkpoints from sources you trust"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a torch checkpoint (unsupported pickle content)"
        ) from None
    except Exception as exc:  # damaged bytes make the unpickler fail in many ways (KeyError, EOFError, ...)
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): {detail}") from None


def backbone_state_dict(method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.``-prefixed entries of a method's state dict, prefix removed."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in method_state.items() if k.startswith(prefix)}


def load_run_backbone(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust_code: bool = False
) -> nn.Module:
    """Rebuilds the backbone of a visionssl checkpoint (file or run directory), weights loaded strictly.

    The checkpoint's config may name a registered or timm backbone; a ``module:function`` /
    ``file.py:function`` backbone is built only from the run directory that recorded it (your own
    run, see ``visionssl.backbones.trust``) or with ``trust_code=True``. Anything malformed raises
    ``CheckpointError`` in one line naming the file.

    Example (with a run made by ``visionssl pretrain --out runs/demo``):
        >>> backbone = load_run_backbone("runs/demo")  # doctest: +SKIP
    """
    return build_run_backbone(load_checkpoint(path, map_location), path, trust_code=trust_code).to(map_location)


def build_run_backbone(ckpt: Any, path: str | os.PathLike, *, trust_code: bool = False) -> nn.Module:
    """The backbone of an already loaded visionssl checkpoint (``load_checkpoint``), weights loaded strictly.

    Example:
        >>> backbone = build_run_backbone(load_checkpoint("runs/demo"), "runs/demo")  # doctest: +SKIP
    """
    from visionssl.backbones.trust import create_backbone_from_file, run_dir_of

    name, kwargs, state = checkpoint_backbone(ckpt, path)
    try:
        backbone = create_backbone_from_file(
            name, kwargs, source=f"checkpoint {path}", trust_code=trust_code, run_dir=run_dir_of(path)
        )
    except (ValueError, KeyError) as exc:
        raise CheckpointError(str(exc)) from None
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(
            f"the weights in {path} do not fit its backbone {name!r}: "
            f"{detail[:300]}{'...' if len(detail) > 300 else ''}"
        ) from None
    return backbone


def checkpoint_backbone(ckpt: Any, path: str | os.PathLike) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """``(backbone name, kwargs, backbone state dict)`` of a loaded checkpoint; ``CheckpointError`` if malformed."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a visionssl checkpoint: {what}")

    if not isinstance(ckpt, dict):
        raise bad(f"it holds a {type(ckpt).__name__}, not a dict")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise bad("no format='visionssl' field")
    config, method = ckpt.get("config"), ckpt.get("method")
    spec = config.get("backbone") if isinstance(config, dict) else None
    if not isinstance(spec, dict) or "name" not in spec:
        raise bad("no config['backbone']['name']")
    if not isinstance(method, dict) or not method:
        raise bad("no 'method' state dict")
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in method.items()):
        raise bad("its 'method' state dict holds entries that are not named tensors")
    state = backbone_state_dict(method)
    if not state:
        raise bad("its 'method' state dict has no 'backbone.' weights")
    return spec["name"], spec.get("kwargs"), state
