"""Trust model: a backbone named by a file is data, never code.

A checkpoint's config, a ``.safetensors`` file's metadata and a zoo entry may name a registered
backbone or a timm model only. A ``module:function`` or ``file.py:function`` spec found in a file
is imported only when the user vouches for it: ``trust_code=True`` (CLI ``--trust-code``), or the
run directory's ``trusted_code.json`` record, which a run writes when the user gave the spec
(``--backbone my.py:fn``, or a config built in Python). The record is signed with a key that never
leaves this machine (``$VISIONSSL_HOME/trust_key``), so a run directory from someone else does
not carry trust; a checkpoint file moved out of its run directory, or exported, does not either.

Keyword arguments from a file are plain data (numbers, strings, bools, None, and lists / dicts
of those) and must be accepted by the factory's signature.

Example:
    >>> check_backbone_spec("resnet18_cifar", {"in_chans": 1}, source="ck.pt")
    ('resnet18_cifar', {'in_chans': 1})
    >>> check_backbone_spec("subprocess:run", {}, source="ck.pt")
    Traceback (most recent call last):
    ...
    visionssl.backbones.trust.UntrustedCodeError: ck.pt names the backbone 'subprocess:run', ...
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from visionssl.errors import TrustError
from visionssl.files import visionssl_home

logger = logging.getLogger(__name__)

TRUST_RECORD = "trusted_code.json"
TRUST_CODE_HELP = (
    "allow a backbone named as code (module:function, file.py:function) by a checkpoint, safetensors "
    "metadata or zoo entry; it imports and runs that code, so only for files from a source you trust"
)
# timm options that fetch or read weights by themselves: a file's weights come from the file
TIMM_FORBIDDEN = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


class UntrustedCodeError(TrustError):
    """A file names code (``module:function``, ``file.py:function``) the user did not vouch for."""


def is_code_spec(name: str) -> bool:
    """Whether ``name`` is an import spec (``module:function`` / ``file.py:function``), not a model name.

    Example:
        >>> is_code_spec("my_net.py:build"), is_code_spec("resnet18")
        (True, False)
    """
    from visionssl.backbones import BACKBONES

    return ":" in name and name not in BACKBONES


def check_backbone_spec(name: Any, kwargs: Any, *, source: str, trust_code: bool = False) -> tuple[str, dict]:
    """``(name, kwargs)`` from a file, checked: a known model (or trusted code) and data-only arguments.

    Raises ``UntrustedCodeError`` or ``ValueError`` with one line naming ``source``.
    """
    from visionssl.backbones import BACKBONES

    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: the backbone name must be a non-empty string, got {_short(name)}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{source}: the backbone's keyword arguments must be a mapping of names, got {_short(kwargs)}")
    for key, value in kwargs.items():
        if not _is_data(value):
            raise ValueError(
                f"{source}: backbone argument {key!r} must be plain data (numbers, strings, lists, "
                f"dicts), got {type(value).__name__}"
            )
    if is_code_spec(name):
        if not trust_code:
            raise UntrustedCodeError(
                f"{source} names the backbone {name!r}, which is code (module:function / file.py:function), not a "
                f"registered or timm model, and visionssl does not import code named by a file; if you trust it, "
                f"pass it yourself (--backbone {name}) or allow it with --trust-code (Python: trust_code=True)"
            )
        return name, dict(kwargs)
    if name in BACKBONES:
        _check_signature(BACKBONES.get(name), name, kwargs, source)
        return name, dict(kwargs)
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"{source} names the backbone {name!r}, which is neither a registered backbone nor a timm "
            f"model (see `visionssl backbones`)"
        )
    bad = sorted(set(kwargs) & set(TIMM_FORBIDDEN))
    if bad:
        raise ValueError(
            f"{source}: backbone argument(s) {', '.join(bad)} would load weights from elsewhere; "
            f"the weights come from the file itself"
        )
    return name, dict(kwargs)


def create_backbone_from_file(name: Any, kwargs: Any, *, source: str, trust_code: bool = False) -> Any:
    """``create_backbone`` for a spec read from a file: checked first (``check_backbone_spec``), one line on error.

    Example:
        >>> create_backbone_from_file("resnet10t_cifar", {}, source="ck.pt").num_features
        512
    """
    from visionssl.backbones import create_backbone

    name, kwargs = check_backbone_spec(name, kwargs, source=source, trust_code=trust_code)
    try:
        return create_backbone(name, **kwargs)
    except TypeError as exc:  # timm's model classes reject unknown arguments here
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "TypeError"
        raise ValueError(f"{source}: backbone {name!r} rejected its arguments {sorted(kwargs)}: {detail}") from None


def _check_signature(factory: Any, name: str, kwargs: dict, source: str) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"{source}: backbone {name!r} has no argument(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )


def _is_data(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_data(v, depth + 1) for k, v in value.items())
    return False


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------- trust records in run directories
def _key(create: bool) -> bytes | None:
    home = visionssl_home()
    path = home / "trust_key"
    try:
        if path.is_file():
            key = path.read_bytes()
            if len(key) >= 32:
                return key
        if not create:
            return None
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".trust_key.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # atomic: two processes creating the key at once agree on one
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_bytes()
    except OSError as exc:
        logger.warning(
            "cannot use the trust key %s (%s): runs with code backbones will need --trust-code to load", path, exc
        )
        return None


def _signature(key: bytes, name: str) -> str:
    return hmac.new(key, f"visionssl-trusted-backbone\0{name}".encode(), hashlib.sha256).hexdigest()


def record_trust(run_dir: str | os.PathLike, name: str) -> Path | None:
    """Writes ``run_dir/trusted_code.json``: this machine's user gave the code backbone ``name``.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = record_trust(d, "my_net.py:build"); run_trusts(d, "my_net.py:build"), run_trusts(d, "os:system")
        (True, False)
    """
    key = _key(create=True)
    if key is None:
        return None
    path = Path(run_dir) / TRUST_RECORD
    path.write_text(json.dumps({"backbone": name, "signature": _signature(key, name)}) + "\n")
    return path


def run_trusts(run_dir: str | os.PathLike, name: str) -> bool:
    """Whether ``run_dir`` holds a valid trust record, signed on this machine, for the backbone ``name``."""
    key = _key(create=False)
    try:
        record = json.loads((Path(run_dir) / TRUST_RECORD).read_text())
    except (OSError, ValueError):
        return False
    if key is None or not isinstance(record, dict) or record.get("backbone") != name:
        return False
    return hmac.compare_digest(str(record.get("signature", "")), _signature(key, name))


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run directory a checkpoint path belongs to (itself for a directory, ``RUN/checkpoints/x.pt`` -> ``RUN``)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
