"""visionssl: self-supervised visual representation learning on any timm backbone.

Example:
    >>> import visionssl as vs
    >>> "simclr" in vs.list_methods() and "resnet18_cifar" in vs.list_backbones("resnet1*")
    True
"""

from visionssl import augment, data, engine, errors, eval, losses, zoo  # noqa: A004  (vs.eval is the evaluation package)
from visionssl.backbones import create_backbone, list_backbones, register_backbone
from visionssl.errors import UserError
from visionssl.methods import SSLMethod, create_method, list_methods, register_method
from visionssl.registry import Registry, RegistryError

engine.build.set_init_loader(zoo.init_weights)  # backbone.init: the engine sits below the zoo that reads it

__version__ = "0.1.0"

__all__ = [
    "Registry",
    "RegistryError",
    "SSLMethod",
    "UserError",
    "augment",
    "create_backbone",
    "create_method",
    "data",
    "engine",
    "errors",
    "eval",
    "list_backbones",
    "list_methods",
    "losses",
    "register_backbone",
    "register_method",
    "zoo",
]
