"""One generic registry for backbones, methods, augmentations and datasets.

Example:
    >>> from visionssl.registry import Registry
    >>> colours = Registry("colour")
    >>> @colours.register("red")
    ... def red():
    ...     return (255, 0, 0)
    >>> colours.create("red")
    (255, 0, 0)
    >>> colours.list("r*")
    ['red']
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from visionssl.errors import ConfigError, UserError

logger = logging.getLogger(__name__)


class RegistryError(UserError, KeyError):
    """An unknown or duplicate name; the message lists what would be valid."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class Registry:
    """Maps names to factories (functions or classes).

    Args:
        kind: what the registry holds, used in error messages ("method", "backbone").
        entry_point_group: optional ``importlib.metadata`` entry-point group; third-party
            packages listed there are registered the first time the registry is read.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._factories: dict[str, Callable[..., Any]] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str | None = None, *, override: bool = False) -> Callable:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``).

        Registering a taken name is an error unless ``override=True``.
        """

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            key = name or factory.__name__
            if key in self._factories and not override and self._factories[key] is not factory:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered (by {_origin(self._factories[key])}); "
                    f"pick another name or pass override=True"
                )
            self._factories[key] = factory
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., Any], *, override: bool = False) -> None:
        """Registers ``factory`` under ``name`` without the decorator syntax."""
        self.register(name, override=override)(factory)

    def get(self, name: str) -> Callable[..., Any]:
        """Returns the factory registered as ``name``; an unknown name lists the closest ones."""
        self._load_plugins()
        try:
            return self._factories[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Calls the factory registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard ``pattern``."""
        self._load_plugins()
        return sorted(n for n in self._factories if fnmatch.fnmatchcase(n, pattern))

    def unknown_message(self, name: str, extra: Iterable[str] = ()) -> str:
        names = sorted(set(self._factories) | set(extra))
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(names[:30])}"
        return f"unknown {self.kind} {name!r}; {hint}"

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._factories

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._factories)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # set first: a plugin may read the registry while importing
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._factories:
                continue  # the plugin module registered itself on import
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the library
                logger.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            if ep.name not in self._factories and callable(obj):
                self._factories[ep.name] = obj


def import_object(path: str) -> Any:
    """Imports ``package.module:attribute`` or ``path/to/file.py:attribute`` (e.g. a user's backbone factory).

    Example:
        >>> import_object("math:sqrt")(4.0)
        2.0
    """
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{path!r} is not of the form 'package.module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            module = _import_file(module_name)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # console scripts do not put the working directory on the path
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as exc:
        raise ConfigError(f"cannot import {module_name!r} from {path!r}: {exc}") from None
    except SyntaxError as exc:  # the user's file does not parse: name the place, not our traceback
        raise ConfigError(
            f"cannot import {module_name!r} from {path!r}: SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
        ) from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"{module_name!r} has no attribute {attr!r} (from {path!r})") from None
    return obj


def user_module_name(resolved: Path) -> str:
    """The ``sys.modules`` name under which the file ``resolved`` (an absolute path) is imported, once per process.

    Example:
        >>> user_module_name(Path("/x/my_net.py")).startswith("visionssl_user_my_net_")
        True
    """
    return f"visionssl_user_{resolved.stem}_{abs(hash(str(resolved)))}"


def _import_file(file: str) -> Any:
    resolved = Path(file).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"{file} does not exist")
    name = user_module_name(resolved)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
