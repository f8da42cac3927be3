"""A run's trust record (``RUN/trusted_code.json``) vouches for the code its backbone spec resolved to.

When a run whose backbone is code (``mynet:build``, ``/abs/net.py:build``) starts, it records, signed
with an HMAC under this machine's key (``$VISIONSSL_HOME/trust_key``, never copied anywhere):

- the spec and the backbone's keyword arguments,
- the run it belongs to (a random id the run keeps when resumed),
- every file the spec resolved to, absolute, with its sha256: for ``pkg.mod:fn`` the packages'
  ``__init__.py`` files and ``mod.py``; for ``file.py:fn`` that file.

Loading the run later resolves the spec again the way it would be imported (from the current directory
and ``sys.path``), hashes what it finds, and refuses in one line (``UntrustedCodeError``) unless the
signature, spec, arguments and every hash agree; then it imports exactly the bytes it hashed. A file that
moved keeps its trust if the same bytes resolve; other bytes under the same name do not.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "net.py").write_text("def build(**kw):\\n    return kw\\n")
    >>> spec = f"{d / 'net.py'}:build"
    >>> _ = record_trust(d, spec, {"width": 4})
    >>> vouched_import(d, spec, {"width": 4}, source="doc")(width=4)
    {'width': 4}
    >>> _ = (d / "net.py").write_text("import os\\n")
    >>> vouched_import(d, spec, {"width": 4}, source="doc")
    Traceback (most recent call last):
    ...
    visionssl.backbones.trust_record.UntrustedCodeError: doc: the code that `...net.py:build` names has changed since ...
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.machinery
import importlib.util
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from visionssl.errors import ConfigError, TrustError
from visionssl.files import atomic_write, visionssl_home
from visionssl.registry import user_module_name

logger = logging.getLogger(__name__)

TRUST_RECORD = "trusted_code.json"
RECORD_FORMAT = 2


class UntrustedCodeError(TrustError):
    """A file names code (``module:function``, ``file.py:function``) the user did not vouch for."""


@dataclass
class _Code:
    """One module of a spec, as it resolves now: its name, spec, file and the bytes that were hashed."""

    module: str  # the name in sys.modules
    spec: Any  # importlib's ModuleSpec, or None when the module is already imported
    file: Path | None
    data: bytes | None
    label: str = ""  # the name recorded: the module's, or for a file.py spec the file as the spec names it

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    def entry(self) -> dict[str, Any]:
        return {
            "module": self.label or self.module,
            "file": str(self.file) if self.file else None,
            "sha256": self.sha256,
        }


def record_trust(run_dir: str | os.PathLike, name: str, kwargs: Any = None) -> Path | None:
    """Writes ``run_dir/trusted_code.json``: this machine's user vouches for the code ``name`` resolves to now.

    Returns None (and logs why) when there is no usable key. An existing record of this run keeps its run id.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = record_trust(d, "json:dumps", {}); run_trusts(d, "json:dumps", {}), run_trusts(d, "os:system", {})
        (True, False)
    """
    key = _key(create=True)
    if key is None:
        return None
    try:
        files = [code.entry() for code in _resolve(name)]
    except (ImportError, OSError, ValueError) as exc:  # e.g. a method built in Python around another backbone
        logger.warning("cannot vouch for the code %r (%s): loading this run will need --trust-code", name, exc)
        return None
    path = Path(run_dir) / TRUST_RECORD
    previous = _read(path)
    run = previous.get("run") if previous and _signed(key, previous) else None
    body = {
        "format": RECORD_FORMAT,
        "backbone": name,
        "kwargs": _plain(kwargs or {}),
        "run": run if isinstance(run, str) else secrets.token_hex(16),
        "files": files,
    }
    body["signature"] = _sign(key, body)
    return atomic_write(path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def run_trusts(run_dir: str | os.PathLike, name: str, kwargs: Any = None) -> bool:
    """Whether ``run_dir``'s record vouches for ``name`` with ``kwargs`` and the code it resolves to now (imports nothing)."""
    try:
        return _verify(Path(run_dir), name, kwargs or {}, source=str(run_dir)) is not None
    except UntrustedCodeError:
        return False


def vouched_import(run_dir: str | os.PathLike, name: str, kwargs: Any, *, source: str) -> Callable | None:
    """The object ``name`` names, imported from exactly the files ``run_dir``'s record vouches for.

    None when ``run_dir`` holds no record; ``UntrustedCodeError`` (one line, naming ``source``) when it
    holds one that does not vouch for this spec, these arguments or the code that resolves now.
    """
    chain = _verify(Path(run_dir), name, kwargs or {}, source=source)
    if chain is None:
        return None
    module = None
    for code in chain:
        module = sys.modules.get(code.module) or _exec(code, module)
    obj: Any = module
    try:
        for part in name.rpartition(":")[2].split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"{source}: `{name}`: {chain[-1].module!r} has no attribute {part!r}") from None
    return obj


def _verify(run_dir: Path, name: str, kwargs: Any, *, source: str) -> list[_Code] | None:
    path = run_dir / TRUST_RECORD
    if not path.exists() and not path.is_symlink():
        return None
    record = _read(path)
    redo = "; pass --trust-code to load it anyway (or resume the run with --trust-code to vouch for it again)"
    if record is None:
        raise UntrustedCodeError(f"{source}: the trust record {path} is damaged (not a JSON object){redo}")
    if record.get("format") != RECORD_FORMAT or not isinstance(record.get("files"), list):
        raise UntrustedCodeError(
            f"{source}: the trust record {path} vouches for the name {record.get('backbone')!r} only, not for the "
            f"code it names (an older visionssl wrote it), so it is no longer trusted; re-run with --trust-code"
        )
    key = _key(create=False)
    if key is None or not _signed(key, record):
        raise UntrustedCodeError(
            f"{source}: the trust record {path} was not signed on this machine (another machine's run, or edited){redo}"
        )
    if record.get("backbone") != name:
        raise UntrustedCodeError(
            f"{source}: the trust record {path} vouches for the backbone {record.get('backbone')!r}, not {name!r}{redo}"
        )
    if _canonical(record.get("kwargs")) != _canonical(_plain(kwargs)):
        raise UntrustedCodeError(
            f"{source}: the trust record {path} vouches for `{name}` with the arguments "
            f"{_canonical(record.get('kwargs'))[:120]}, not {_canonical(_plain(kwargs))[:120]}{redo}"
        )
    vouched = record["files"]
    try:
        chain = _resolve(name)
    except (ImportError, OSError, ValueError) as exc:
        raise UntrustedCodeError(
            f"{source}: the code that `{name}` names no longer resolves ({exc}); the run vouched for "
            f"{_where(vouched)}; pass --trust-code to load it anyway"
        ) from None
    now = [code.entry() for code in chain]
    if [(e.get("module"), e.get("sha256")) for e in vouched if isinstance(e, dict)] != [
        (e["module"], e["sha256"]) for e in now
    ]:
        raise UntrustedCodeError(
            f"{source}: the code that `{name}` names has changed since this run vouched for it (it resolves to "
            f"{_where(now)}; the run vouched for {_where(vouched)}); pass --trust-code to load it anyway"
        )
    return chain


def _resolve(name: str) -> list[_Code]:
    """The modules ``name`` imports, outermost package first, found as ``import`` would find them; runs nothing."""
    module_name, sep, attr = name.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{name!r} is not of the form 'package.module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        file = Path(module_name).expanduser().resolve()
        if not file.is_file():
            raise FileNotFoundError(f"{module_name} does not exist")
        spec = importlib.util.spec_from_file_location(user_module_name(file), file)
        return [_Code(spec.name, spec, file, file.read_bytes(), label=module_name)]
    chain, search = [], None
    parts = module_name.split(".")
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        loaded = sys.modules.get(full)
        if loaded is not None:  # imported already: that module is what runs
            origin = getattr(loaded, "__file__", None)
            file = Path(origin).resolve() if origin else None
            chain.append(_Code(full, None, file, file.read_bytes() if file else None))
            search = list(getattr(loaded, "__path__", None) or [])
            continue
        spec = _find_spec(full, search)
        if spec is None:
            raise ImportError(f"no module named {full!r}")
        file = Path(spec.origin).resolve() if spec.has_location and spec.origin else None
        chain.append(_Code(full, spec, file, file.read_bytes() if file else None))
        search = list(spec.submodule_search_locations or [])
    return chain


def _find_spec(full: str, search: list[str] | None) -> Any:
    """What ``import`` would find for ``full``, without importing anything (its parents are resolved already)."""
    if search is None:  # a top-level module, found as `import_object` finds it: the working directory first
        search = sys.path if ("" in sys.path or os.getcwd() in sys.path) else [os.getcwd(), *sys.path]
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        spec = find(full, search if finder is importlib.machinery.PathFinder else (search if "." in full else None))
        if spec is not None:
            return spec
    return None


def _exec(code: _Code, parent: ModuleType | None) -> ModuleType:
    """Imports ``code`` from the bytes that were hashed (never re-read from a path that may have changed)."""
    module = importlib.util.module_from_spec(code.spec)
    sys.modules[code.module] = module
    try:
        if code.data is not None and isinstance(code.spec.loader, importlib.machinery.SourceFileLoader):
            exec(compile(code.data, str(code.file), "exec", dont_inherit=True), module.__dict__)
        else:  # an extension module or a namespace package: its loader reads it
            code.spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(code.module, None)
        raise
    if parent is not None:
        setattr(parent, code.module.rpartition(".")[2], module)
    return module


def _where(entries: list[Any]) -> str:
    parts = [
        f"{e.get('file') or e.get('module')} (sha256 {str(e.get('sha256'))[:12]})"
        for e in entries
        if isinstance(e, dict)
    ]
    return ", ".join(parts) or "nothing"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))  # tuples as lists, as a checkpoint stores them


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _sign(key: bytes, body: dict) -> str:
    fields = {k: v for k, v in body.items() if k != "signature"}
    return hmac.new(key, b"visionssl-trusted-code\0" + _canonical(fields).encode(), hashlib.sha256).hexdigest()


def _signed(key: bytes, record: dict) -> bool:
    return hmac.compare_digest(str(record.get("signature", "")), _sign(key, record))


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
