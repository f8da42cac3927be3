"""What a run is built from, one step each: the training data, the method, its views, the loader, the optimizer.

``visionssl.engine.Trainer`` calls them in this order; each takes the resolved config and what the
steps before it built, and raises ``ConfigError`` naming the setting it cannot honour.

Starting weights (``backbone.init``): the engine sits below the zoo, so it cannot read a zoo name, an export or
a run itself. ``build_init`` calls an injected ``InitLoader`` (``(spec, backbone, kwargs) -> BackboneInit``):
the Trainer's ``init_loader`` argument, else the one the package root registers with ``set_init_loader``
(``visionssl.zoo.init_weights``, which goes through ``resolve_checkpoint`` and its trust rules).
``build_method`` then builds the backbone, loads those weights strictly and builds the method around it, so
a momentum target copies the loaded backbone and the heads start fresh.

Example:
    >>> import torch
    >>> from visionssl.engine.config import load_config
    >>> cfg = load_config("simclr", overrides=["data.name=synthetic:64", "backbone.name=resnet10t_cifar",
    ...     "optim.batch_size=32", "data.image_size=16", "augment.image_size=16"])
    >>> data = build_train_set(cfg, world_size=1)
    >>> method = build_method(cfg, torch.device("cpu"))
    >>> lr, optimizer = build_optimizer(cfg, method)
    >>> len(data), lr, type(optimizer).__name__
    (64, 0.05, 'Lars')
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from visionssl import augment as augment_lib
from visionssl import distributed
from visionssl.backbones import create_backbone
from visionssl.backbones.features import input_channels
from visionssl.data import BatchLoader, load_dataset
from visionssl.data.decode import display_path
from visionssl.engine.config import ConfigError, to_dict
from visionssl.engine.optim import create_optimizer
from visionssl.errors import CheckpointError
from visionssl.methods import SSLMethod, create_method, method_class
from visionssl.methods.base import dynamic_vit_kwargs

logger = logging.getLogger("visionssl.engine.trainer")


def build_train_set(cfg: DictConfig, train_set: Any = None, world_size: int = 1) -> Any:
    """The unlabelled training images of ``cfg.data`` (``train_set`` when given), checked against the batch size.

    With ``data.stream`` the files are only listed (decoded and cropped batch by batch by the loader).
    """
    data = cfg.data
    if cfg.train.precise_bn and data.stream:
        raise ConfigError("train.precise_bn=true needs the images in memory; it does not run with data.stream=true")
    if train_set is None and data.stream:
        from visionssl.data.crop_loader import list_image_files

        train_set = list_image_files(data.name, "train")
    elif train_set is None:
        train_set = load_dataset(data.name, "train", data.image_size, data.skip_bad_images)
    if train_set.skipped:
        logger.warning(
            "skipped %d unreadable images: %s",
            len(train_set.skipped),
            "; ".join(f"{display_path(p)} ({r})" for p, r in train_set.skipped[:10]),
        )
    batch = cfg.optim.batch_size
    if batch > len(train_set):
        raise ConfigError(f"optim.batch_size={batch} is larger than the dataset ({len(train_set)} images)")
    if batch % world_size:
        raise ConfigError(
            f"optim.batch_size={batch} is the global batch, split over {world_size} "
            f"processes: it must be a multiple of {world_size}"
        )
    return train_set


@dataclass(frozen=True)
class BackboneInit:
    """Weights a run's backbone starts from (``backbone.init``), and the record of where they came from.

    Attributes:
        state_dict: the backbone's weights, under the backbone's own keys.
        record: what the run records: ``init`` (the spec), ``kind`` (export | run | zoo | timm), ``file``,
            ``sha256`` (of that file), ``backbone`` and ``backbone_kwargs`` (the architecture the file names).
    """

    state_dict: dict[str, torch.Tensor]
    record: dict[str, Any]


InitLoader = Callable[[str, str, dict[str, Any]], BackboneInit]  # (backbone.init, backbone.name, kwargs)
_init_loaders: list[InitLoader] = []


def set_init_loader(loader: InitLoader) -> None:
    """Sets the loader ``build_init`` uses when the Trainer is given none (the package root sets the zoo's).

    Example:
        >>> set_init_loader(lambda spec, name, kwargs: BackboneInit({}, {"init": spec, "sha256": "0" * 64}))
        >>> import visionssl.zoo; set_init_loader(visionssl.zoo.init_weights)  # the package root's, back
    """
    _init_loaders[:] = [loader]


def build_init(
    cfg: DictConfig, loader: InitLoader | None = None, method: SSLMethod | None = None
) -> BackboneInit | None:
    """The weights ``backbone.init`` names (None for ``random``), through ``loader`` or the registered one.

    Their file's sha256 is set as ``backbone.init_sha256`` in ``cfg`` (the run's config.yaml and checkpoints
    record it); a sha256 already there pins the file: another one is a ``CheckpointError``. With an already
    built ``method`` (the Trainer's argument) any init but ``random`` is a ``ConfigError``.

    Example:
        >>> from visionssl.engine.config import load_config
        >>> build_init(load_config("simclr")) is None
        True
    """
    spec = str(cfg.backbone.init)
    if spec == "random":
        return None
    if method is not None:
        raise ConfigError(
            f"backbone.init={spec} loads weights into the backbone the Trainer builds; with a method given, load "
            "them into method.backbone yourself and leave backbone.init=random"
        )
    if loader is None:
        if not _init_loaders:  # the package root registers the zoo's loader; only a broken import skips it
            raise RuntimeError("no loader for backbone.init is registered (import visionssl)")
        loader = _init_loaders[0]
    with torch.random.fork_rng(devices=[]):  # building the file's backbone draws numbers: the run's draws stay its own
        init = loader(spec, str(cfg.backbone.name), to_dict(cfg.backbone.kwargs))
    pinned, found = cfg.backbone.init_sha256, init.record["sha256"]
    if pinned and pinned != found:
        raise CheckpointError(
            f"backbone.init={spec}: {init.record.get('file') or spec} has sha256 {found}, but the config pins "
            f"backbone.init_sha256={pinned} (the file changed; remove the pin to start from it as it is now)"
        )
    cfg.backbone.init_sha256 = found
    return init


def init_backbone(cfg: DictConfig, init: BackboneInit) -> nn.Module:
    """``cfg.backbone`` built as the method would build it, with ``init``'s weights loaded strictly.

    Keys the run's backbone lacks or the file lacks, or tensors of other shapes, are one ``CheckpointError``
    naming both architectures and the keys.

    Example:
        >>> from visionssl.engine.config import load_config
        >>> cfg = load_config("simclr", overrides=["backbone.name=resnet10t_cifar"])
        >>> weights = create_backbone("resnet10t_cifar").state_dict()
        >>> net = init_backbone(cfg, BackboneInit(weights, {"init": "w", "backbone": "resnet10t_cifar"}))
        >>> torch.equal(net.state_dict()["conv1.0.weight"], weights["conv1.0.weight"])
        True
        >>> init_backbone(cfg, BackboneInit({}, {"init": "w.safetensors", "backbone": "resnet18"}))
        Traceback (most recent call last):
        ...
        visionssl.errors.CheckpointError: backbone.init=w.safetensors holds weights for 'resnet18', which do not fit this run's backbone 'resnet10t_cifar': missing keys ...
    """
    name, kwargs = str(cfg.backbone.name), to_dict(cfg.backbone.kwargs)
    if method_class(cfg.method["name"]).multi_size_views:  # what SSLMethod.__init__ does with a backbone name
        kwargs = dynamic_vit_kwargs(name, kwargs, cfg.method["name"])
    backbone = create_backbone(name, **kwargs)
    own, state = backbone.state_dict(), init.state_dict
    problems = [
        _keys("missing keys", own.keys() - state.keys()),
        _keys("unexpected keys", state.keys() - own.keys()),
        _keys(
            "other shapes",
            [
                f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
                for k in own.keys() & state.keys()
                if tuple(state[k].shape) != tuple(own[k].shape)
            ],
        ),
    ]
    if any(problems):
        theirs = init.record.get("backbone")
        kw = init.record.get("backbone_kwargs") or {}
        raise CheckpointError(
            f"backbone.init={init.record['init']} holds weights for {theirs!r}{f' {kw}' if kw else ''}, which do not "
            f"fit this run's backbone {name!r}{f' {kwargs}' if kwargs else ''}: {'; '.join(p for p in problems if p)}"
            " (pick a backbone.name matching the file, or another init)"
        )
    backbone.load_state_dict(state, strict=True)
    return backbone


def _keys(what: str, keys: Any, shown: int = 5) -> str:
    keys = sorted(keys)
    if not keys:
        return ""
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return f"{what} {', '.join(keys[:shown])}{more}"


def build_method(
    cfg: DictConfig, device: torch.device, method: SSLMethod | None = None, init: BackboneInit | None = None
) -> SSLMethod:
    """``cfg.method`` on ``cfg.backbone`` (or ``method``), on ``device``: SyncBatchNorm and channels_last as asked.

    With ``init`` (``build_init``) the backbone starts from those weights (``init_backbone``); the heads, and
    every other module the method builds, start fresh.
    """
    method = method or create_method(
        cfg.method["name"],
        backbone=init_backbone(cfg, init) if init is not None else cfg.backbone.name,
        backbone_kwargs=dict(cfg.backbone.kwargs) if init is None else {},
        **{k: v for k, v in to_dict(cfg.method).items() if k != "name"},
    )
    if cfg.train.sync_bn and distributed.is_distributed():
        if device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs GPUs: torch's SyncBatchNorm does not run on the CPU")
        method = distributed.convert_sync_batchnorm(method)
    method.to(device)
    if cfg.train.channels_last:  # faster convolutions on CUDA, and on the CPU with oneDNN
        method.to(memory_format=torch.channels_last)
    return method


def build_augment(cfg: DictConfig, method: SSLMethod, device: torch.device) -> augment_lib.MultiView:
    """The view-making preset: ``augment.name`` or the method's own, for the backbone's input channels."""
    return augment_lib.create(
        cfg.augment.name or method.augmentation,
        image_size=cfg.augment.image_size,
        channels=input_channels(method.backbone),
        **to_dict(cfg.augment.kwargs),
    ).to(device)


def build_loader(
    cfg: DictConfig, train_set: Any, augment: Any, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(loader, augment)``: each rank's block of every global batch (``optim.batch_size``), and the views.

    Streaming (``data.stream``) moves the preset's crops into the loader's workers: the returned
    ``augment`` keeps the rest of the preset. In memory, ``augment`` is returned as it was.
    """
    if cfg.data.stream:
        from visionssl.engine.stream_loader import stream_loader

        return stream_loader(
            train_set,
            augment,
            cfg.optim.batch_size,
            device,
            seed=cfg.train.seed,
            num_workers=cfg.data.workers,
            gpu_decode=cfg.data.gpu_decode,
            skip_bad_images=cfg.data.skip_bad_images,
            rank=rank,
            world_size=world_size,
        )
    loader = BatchLoader(train_set, cfg.optim.batch_size, device, seed=cfg.train.seed, rank=rank, world_size=world_size)
    return loader, augment


def build_optimizer(cfg: DictConfig, method: SSLMethod) -> tuple[float, torch.optim.Optimizer]:
    """``(lr, optimizer)``: ``optim.lr`` scaled on the global batch (``optim.lr_scaling``) and ``optim.name``."""
    optim = cfg.optim
    scale = {"linear": optim.batch_size / 256, "sqrt": math.sqrt(optim.batch_size / 256), "none": 1.0}
    lr = optim.lr * scale[optim.lr_scaling]
    optimizer = create_optimizer(
        method.param_groups(optim.weight_decay),
        optim.name,
        lr=lr,
        momentum=optim.momentum,
        betas=tuple(optim.betas),
        trust_coefficient=optim.trust_coefficient,
    )
    return lr, optimizer


__all__ = [
    "BackboneInit",
    "InitLoader",
    "build_augment",
    "build_init",
    "build_loader",
    "build_method",
    "build_optimizer",
    "build_train_set",
    "init_backbone",
    "set_init_loader",
]
