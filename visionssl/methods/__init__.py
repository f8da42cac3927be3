"""Self-supervised methods, one per file, registered by name.

Example:
    >>> import torch, visionssl as vs
    >>> method = vs.create_method("simclr", backbone="resnet18_cifar")
    >>> out = method([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    >>> out["loss"].backward()
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from visionssl.methods.base import SSLMethod, TrainingContext, mlp  # noqa: F401  (re-exported)
from visionssl.registry import Registry

METHODS = Registry("method", entry_point_group="visionssl.methods")


def register_method(name: str | None = None, *, override: bool = False) -> Callable:
    """Registers an ``SSLMethod`` subclass (or a factory returning one) under ``name``."""
    return METHODS.register(name, override=override)


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the registered methods matching a wildcard pattern.

    Example:
        >>> import visionssl as vs
        >>> "simclr" in vs.list_methods()
        True
    """
    return METHODS.list(pattern)


def method_hparams(name: str) -> dict[str, Any]:
    """The hyperparameters a method declares, with their defaults (``backbone`` excluded)."""
    factory = METHODS.get(name)
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = inspect.signature(target).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "backbone", "backbone_kwargs") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def method_class(name: str) -> type[SSLMethod]:
    """The class that declares method ``name``'s contract (``hparam_ranges``, ``check_config``, ...): the
    registered ``SSLMethod`` subclass, or ``SSLMethod`` itself for a factory function, whose defaults then apply.

    Example:
        >>> method_class("moco").__name__, method_class("simclr").hparam_ranges
        ('MoCo', {})
    """
    factory = METHODS.get(name)
    return factory if inspect.isclass(factory) and issubclass(factory, SSLMethod) else SSLMethod


def create_method(
    name: str, backbone: str | nn.Module | None = None, backbone_kwargs: dict | None = None, **hparams: Any
) -> SSLMethod:
    """Builds a registered method around a backbone (a name for ``create_backbone`` or a module;
    None: the method's default).

    An unknown hyperparameter is an error that names the closest valid one.
    """
    factory = METHODS.get(name)
    valid = method_hparams(name)
    for key in hparams:
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"method {name!r} has no hyperparameter {key!r}; {hint}valid: {', '.join(valid)}")
    if backbone is not None:
        hparams["backbone"] = backbone
    return factory(backbone_kwargs=backbone_kwargs, **hparams)


def _import_builtin_methods() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_builtin_methods()  # each built-in method file registers itself
