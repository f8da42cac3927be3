"""What a run is built from, one step each: the training data, the method, its views, the loader, the optimizer.

``visionssl.engine.Trainer`` calls them in this order; each takes the resolved config and what the
steps before it built, and raises ``ConfigError`` naming the setting it cannot honour.

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
from typing import Any

import torch
from omegaconf import DictConfig

from visionssl import augment as augment_lib
from visionssl import distributed
from visionssl.backbones.features import input_channels
from visionssl.data import BatchLoader, load_dataset
from visionssl.data.decode import display_path
from visionssl.engine.config import ConfigError, to_dict
from visionssl.engine.optim import create_optimizer
from visionssl.methods import SSLMethod, create_method

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


def build_method(cfg: DictConfig, device: torch.device, method: SSLMethod | None = None) -> SSLMethod:
    """``cfg.method`` on ``cfg.backbone`` (or ``method``), on ``device``: SyncBatchNorm and channels_last as asked."""
    method = method or create_method(
        cfg.method["name"],
        backbone=cfg.backbone.name,
        backbone_kwargs=dict(cfg.backbone.kwargs),
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


__all__ = ["build_augment", "build_loader", "build_method", "build_optimizer", "build_train_set"]
