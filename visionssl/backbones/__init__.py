"""Backbones: any timm model as a feature extractor, plus user-registered factories.

A backbone is an ``nn.Module`` whose ``forward(x)`` returns pooled features ``(B, D)`` and
whose ``num_features`` attribute is ``D``.

Example:
    >>> import torch, visionssl as vs
    >>> net = vs.create_backbone("resnet18_cifar")
    >>> net(torch.randn(2, 3, 32, 32)).shape, net.num_features
    (torch.Size([2, 512]), 512)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from visionssl.errors import ConfigError
from visionssl.registry import Registry, RegistryError, import_object

BACKBONES = Registry("backbone", entry_point_group="visionssl.backbones")


def register_backbone(name: str | None = None, *, override: bool = False) -> Callable:
    """Registers a factory ``(**kwargs) -> nn.Module`` that returns ``(B, D)`` features.

    The module must set ``num_features`` (``D``).

    Example:
        >>> import torch, visionssl as vs
        >>> @vs.register_backbone("tiny_mlp_doc")
        ... def tiny_mlp(image_size=8, **kw):
        ...     net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image_size**2, 16))
        ...     net.num_features = 16
        ...     return net
        >>> vs.create_backbone("tiny_mlp_doc")(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 16])
    """
    return BACKBONES.register(name, override=override)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Builds a backbone by name: a registered factory, ``package.module:function``, or any timm model.

    timm models are built without classifier (``num_classes=0``) and without pretrained
    weights (nothing is downloaded); ``kwargs`` go to ``timm.create_model``. Arguments the model refuses
    raise ``ConfigError`` naming them.

    Example:
        >>> import visionssl as vs
        >>> vs.create_backbone("resnet18", in_chans=1).num_features
        512
        >>> vs.create_backbone("resnet18", no_such_argument=1)
        Traceback (most recent call last):
        ...
        visionssl.errors.ConfigError: backbone 'resnet18' rejected its arguments ['no_such_argument']: ...
    """
    try:
        if name in BACKBONES:
            net = BACKBONES.create(name, **kwargs)
        elif ":" in name:
            net = import_object(name)(**kwargs)
        else:
            import timm

            if not timm.is_model(name):
                raise RegistryError(BACKBONES.unknown_message(name, extra=timm.list_models()))
            net = timm.create_model(name, num_classes=0, **{"pretrained": False, **kwargs})
    except (TypeError, AssertionError) as exc:
        # timm's model classes check their arguments with TypeError (an unknown name) and assert (a combination,
        # e.g. global_pool='token' on a ResNet); without arguments the same error is a bug, not the input
        if not kwargs:
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"backbone {name!r} rejected its arguments {sorted(kwargs)}: {detail}") from None
    check_backbone(net, name)
    return net


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbones and timm model names matching a wildcard pattern.

    Example:
        >>> import visionssl as vs
        >>> "resnet18_cifar" in vs.list_backbones("resnet1*")
        True
    """
    import timm

    names = set(BACKBONES.list(pattern)) | set(timm.list_models(pattern))
    return sorted(names)


def check_backbone(net: Any, name: str = "backbone") -> nn.Module:
    """Raises a clear error unless ``net`` is an ``nn.Module`` with an integer ``num_features``."""
    if not isinstance(net, nn.Module):
        raise ConfigError(f"backbone {name!r} must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(getattr(net, "num_features", None), int):
        raise ConfigError(
            f"backbone {name!r} must have an integer attribute `num_features` (the size D of its (B, D) output)"
        )
    return net


def resolve_backbone(backbone: str | nn.Module, **kwargs: Any) -> nn.Module:
    """A backbone from a name (built with ``kwargs``) or an already built module."""
    if isinstance(backbone, str):
        return create_backbone(backbone, **kwargs)
    return check_backbone(backbone, type(backbone).__name__)


from visionssl.backbones import cifar  # noqa: E402,F401  registers the small-image variants
