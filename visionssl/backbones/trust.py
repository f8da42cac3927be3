"""Trust model: a backbone named by a file is data, never code.

A checkpoint's config, a ``.safetensors`` file's metadata and a zoo entry may name a registered
backbone or a timm model only. A ``module:function`` or ``file.py:function`` spec found in a file
is imported only when the user vouches for it: ``trust_code=True`` (CLI ``--trust-code``), or the
run directory's ``trusted_code.json`` record, which a run writes when the user gave the spec
(``--backbone my.py:fn``, or a config built in Python). The record vouches for the code the spec
resolved to (each file, absolute, with its sha256), the backbone's arguments and the run, signed with a
key that never leaves this machine (``visionssl.backbones.trust_record``): a run directory from someone
else, or other code under the same name, does not carry trust; a checkpoint file moved out of its run
directory, or exported, does not either.

Keyword arguments from a file are plain data, never name weights, files or URLs, and are architecture
arguments with checked values (``visionssl.backbones.file_kwargs``).

Example:
    >>> check_backbone_spec("resnet18_cifar", {"in_chans": 1}, source="ck.pt")
    ('resnet18_cifar', {'in_chans': 1})
    >>> check_backbone_spec("subprocess:run", {}, source="ck.pt")
    Traceback (most recent call last):
    ...
    visionssl.backbones.trust_record.UntrustedCodeError: ck.pt names the backbone 'subprocess:run', ...
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from visionssl.backbones.trust_record import (  # noqa: F401  (record_trust, run_trusts: re-exported for callers)
    TRUST_RECORD,
    UntrustedCodeError,
    record_trust,
    run_trusts,
    vouched_import,
)
from visionssl.errors import ConfigError

TRUST_CODE_HELP = (
    "allow a backbone named as code (module:function, file.py:function) by a checkpoint, safetensors "
    "metadata or zoo entry; it imports and runs that code, so only for files from a source you trust"
)


def is_code_spec(name: str) -> bool:
    """Whether ``name`` is an import spec (``module:function`` / ``file.py:function``), not a model name.

    Example:
        >>> is_code_spec("my_net.py:build"), is_code_spec("resnet18")
        (True, False)
    """
    from visionssl.backbones import BACKBONES

    return ":" in name and name not in BACKBONES


def check_backbone_spec(
    name: Any, kwargs: Any, *, source: str, trust_code: bool = False, run_dir: str | os.PathLike | None = None
) -> tuple[str, dict]:
    """``(name, kwargs)`` from a file, checked: a known model (or vouched-for code) and data-only arguments.

    Code is allowed with ``trust_code=True``, or when ``run_dir``'s trust record vouches for it; then its
    module is imported from exactly the files the record vouches for, so a later ``create_backbone(name)``
    in this process uses that module. Raises ``UntrustedCodeError``, ``TrustError`` or ``ConfigError`` with
    one line naming ``source``.
    """
    from visionssl.backbones import BACKBONES
    from visionssl.backbones.file_kwargs import check_file_kwargs

    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: the backbone name must be a non-empty string, got {_short(name)}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(
            f"{source}: the backbone's keyword arguments must be a mapping of names, got {_short(kwargs)}"
        )
    if is_code_spec(name):
        if not trust_code and (run_dir is None or not _has_record(run_dir)):
            raise UntrustedCodeError(
                f"{source} names the backbone {name!r}, which is code (module:function / file.py:function), not a "
                f"registered or timm model, and visionssl does not import code named by a file; if you trust it, "
                f"pass it yourself (--backbone {name}) or allow it with --trust-code (Python: trust_code=True)"
            )
        kwargs = check_file_kwargs(name, kwargs, source=source, declared=None)
        if not trust_code:
            _vouched(run_dir, name, kwargs, source)  # raises unless the record vouches for the code that resolves now
        return name, kwargs
    if name in BACKBONES:
        declared, open_ended = _parameters(BACKBONES.get(name))
        return name, check_file_kwargs(name, kwargs, source=source, declared=declared, open_ended=open_ended)
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"{source} names the backbone {name!r}, which is neither a registered backbone nor a timm "
            f"model (see `visionssl backbones`)"
        )
    return name, check_file_kwargs(name, kwargs, source=source, declared=[], open_ended=True)


def create_backbone_from_file(
    name: Any, kwargs: Any, *, source: str, trust_code: bool = False, run_dir: str | os.PathLike | None = None
) -> Any:
    """``create_backbone`` for a spec read from a file: checked first (``check_backbone_spec``), one line on error.

    Example:
        >>> create_backbone_from_file("resnet10t_cifar", {}, source="ck.pt").num_features
        512
    """
    from visionssl.backbones import check_backbone

    name, kwargs = check_backbone_spec(name, kwargs, source=source, trust_code=trust_code, run_dir=run_dir)
    factory = None if trust_code or not is_code_spec(name) else _vouched(run_dir, name, kwargs, source)
    if factory is not None:
        return check_backbone(factory(**kwargs), name)
    return build_backbone(name, kwargs, source=source)


def build_backbone(name: str, kwargs: dict, *, source: str) -> Any:
    """``create_backbone(name, **kwargs)`` for arguments already checked; a model refusing them is a ``ConfigError``.

    Example:
        >>> build_backbone("resnet18", {"global_pool": "token"}, source="w.safetensors")
        Traceback (most recent call last):
        ...
        visionssl.errors.ConfigError: w.safetensors: backbone 'resnet18' rejected its arguments ['global_pool']: ...
    """
    from visionssl.backbones import create_backbone

    try:
        return create_backbone(name, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run directory a checkpoint path belongs to (itself for a directory, ``RUN/checkpoints/x.pt`` -> ``RUN``).

    Example:
        >>> str(run_dir_of("runs/a/checkpoints/last.pt"))
        'runs/a'
    """
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _has_record(run_dir: str | os.PathLike) -> bool:
    path = Path(run_dir) / TRUST_RECORD
    return path.exists() or path.is_symlink()


def _vouched(run_dir: Any, name: str, kwargs: dict, source: str) -> Any:
    return None if run_dir is None else vouched_import(run_dir, name, kwargs, source=source)


def _parameters(factory: Any) -> tuple[list[str] | None, bool]:
    """A factory's declared keyword parameters and whether it also takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None, True
    declared = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return declared, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
