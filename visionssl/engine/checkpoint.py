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
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionssl.data.cache import file_mode

CHECKPOINT_FORMAT = "visionssl"
LAST = "last.pt"
TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, not a torch file, or carrying code."""


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
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, file_mode())  # like any other file the user writes, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # make the rename itself survive a power cut
    except Exception as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(exc)  # torch reports a failed write as RuntimeError with the OSError as context
        if cause is None:
            raise
        raise OSError(cause.errno, f"could not write {path}: {cause.strerror or cause}{_free_space(path.parent)}") from exc
    except BaseException:  # KeyboardInterrupt mid-write: no half-written file is left
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Writes a text file atomically (temporary file, fsync, rename), like ``atomic_save``.

    Example:
        >>> import tempfile
        >>> atomic_write_text("epochs: 3\\n", tempfile.mkdtemp() + "/config.yaml").read_text()
        'epochs: 3\\n'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}{_free_space(path.parent)}") from exc
        raise
    return path


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files an ``atomic_save(..., path)`` killed mid-write left beside ``path``.

    Only for files one process writes (a run's own checkpoint): another writer's file in progress
    would be deleted too.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); (folder / ".last.pt.abc.tmp").write_bytes(b"half")
        4
        >>> [p.name for p in remove_stale_temp_files(folder / "last.pt")]
        ['.last.pt.abc.tmp']
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _os_error_in(exc: BaseException | None) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MiB free on that disk)"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system can fsync a directory
    finally:
        os.close(fd)


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
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint (unsupported pickle content)") from None
    except Exception as exc:  # damaged bytes make the unpickler fail in many ways (KeyError, EOFError, ...)
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): {detail}") from None


def backbone_state_dict(method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.``-prefixed entries of a method's state dict, prefix removed."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in method_state.items() if k.startswith(prefix)}


def load_backbone(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                  trust_code: bool = False) -> nn.Module:
    """Rebuilds the backbone of a visionssl checkpoint (file or run directory), weights loaded strictly.

    The checkpoint's config may name a registered or timm backbone; a ``module:function`` /
    ``file.py:function`` backbone is built only from the run directory that recorded it (your own
    run, see ``visionssl.backbones.trust``) or with ``trust_code=True``. Anything malformed raises
    ``CheckpointError`` in one line naming the file.

    Example (with a run made by ``visionssl pretrain --out runs/demo``):
        >>> backbone = load_backbone("runs/demo")  # doctest: +SKIP
    """
    from visionssl.backbones.trust import create_backbone_from_file, run_dir_of, run_trusts

    ckpt = load_checkpoint(path, map_location)
    name, kwargs, state = checkpoint_backbone(ckpt, path)
    trusted = trust_code or (isinstance(name, str) and run_trusts(run_dir_of(path), name))
    try:
        backbone = create_backbone_from_file(name, kwargs, source=f"checkpoint {path}", trust_code=trusted)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(str(exc)) from None
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"the weights in {path} do not fit its backbone {name!r}: "
                              f"{detail[:300]}{'...' if len(detail) > 300 else ''}") from None
    return backbone.to(map_location)


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
