"""Fine-tuning with few labels, the semi-supervised protocol of SimCLR, BYOL and MAE scaled to small data.

A class-balanced, seeded fraction of the training labels (``visionssl.eval.finetune_subset``); the whole
backbone trained with a linear head on augmented views made on the device; the best epoch chosen on a
stratified held-out part of that subset; the test split scored once, with the chosen epoch's weights.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionssl.backbones.features import batched_features, input_channels, resolve_device
from visionssl.errors import ConfigError, DataError, NonFiniteLossError
from visionssl.eval.finetune_subset import check_fraction, label_subset
from visionssl.eval.knn import rank_accuracy
from visionssl.eval.linear_probe import holdout_split

__all__ = ["OPTIMIZERS", "finetune", "is_vit"]

OPTIMIZERS = ("auto", "sgd", "adamw")


def finetune(
    backbone: nn.Module,
    train_set,
    test_set,
    *,
    fraction: float = 0.1,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    optimizer: str = "auto",
    lr: float | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.9,
    layer_decay: float | None = None,
    warmup: float = 0.1,
    augment: str = "mae",
    val_fraction: float = 0.2,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_model: bool = False,
) -> dict[str, Any]:
    """Fine-tunes a copy of ``backbone`` with a linear head on ``fraction`` of the labels; test top-1 of the best epoch.

    The recipe follows the papers, scaled to small data. ``optimizer="auto"`` is SGD with Nesterov momentum
    and no weight decay, ``lr = 0.05 * batch_size / 256`` (SimCLR's fine-tuning) for convolutional networks,
    and AdamW with ``lr = 1e-3 * batch_size / 256``, weight decay 0.05 and layer-wise learning-rate decay
    0.75 (timm's ``param_groups_layer_decay``, as MAE) for ViTs. The learning rate warms up linearly over the
    first ``warmup`` share of the steps, then follows a cosine to zero. Views: the ``augment`` preset's first
    view (default ``mae``: random resized crop 0.2-1 and flip), made on the device from uint8 batches.

    ``val_fraction`` of every class of the labelled subset is held out (stratified, seeded); after every epoch
    the model is scored there, and the epoch with the best held-out top-1 (then the lowest held-out loss)
    is kept. The test split is read once, after training, with the kept weights: its labels never choose.
    A class with a single labelled image stays in training; without any held-out image the last epoch is kept.
    The ``backbone`` passed in is not modified.

    Args:
        backbone: a feature extractor returning (B, D).
        train_set, test_set: labelled ``ImageDataset`` splits (uint8 images).
        fraction: share of every class's training labels used, in (0, 1].
        seed: picks the subset, the held-out part, the head's initialisation and the batch order; it also
            seeds torch's global generator, which the augmentations draw from.
        epochs, batch_size: training length and images per step.
        optimizer: ``auto``, ``sgd`` or ``adamw``.
        lr, weight_decay, momentum: optimizer settings (defaults above).
        layer_decay: per-block learning-rate decay (default 0.75 for a ViT, 1 = none otherwise).
        warmup: share of the steps of linear warmup.
        augment: name of an augmentation preset (``eval`` for no augmentation).
        val_fraction: share of every class of the subset held out to choose the epoch.
        image_size: view side (default: the stored images' side).
        device: ``auto`` (default), ``cpu``, ``cuda``.
        progress: progress bar over the epochs.
        return_model: add ``model``, the fine-tuned ``nn.Sequential(backbone, head)`` of the chosen epoch.

    Returns:
        ``top1``, ``top5`` (test, percent), ``best_epoch``, ``val_top1``, the settings, ``history`` (per epoch:
        ``train_loss``, ``val_top1``, ``val_loss``, ``seconds``) and ``subset`` (the labelled subset's record:
        fraction, seed, counts per class, sha256 of its indices, and the train / held-out sizes).

    Example:
        >>> import visionssl as vs
        >>> from visionssl.data import load_dataset
        >>> train, test = load_dataset("synthetic:64", "train", 16), load_dataset("synthetic:32", "test", 16)
        >>> out = vs.eval.finetune(vs.create_backbone("resnet10t_cifar"), train, test, fraction=0.5, epochs=2,
        ...                        progress=False)
        >>> out["subset"]["images"], out["subset"]["per_class"], len(out["history"])
        (32, {'freq0': 8, 'freq1': 8, 'freq2': 8, 'freq3': 8}, 2)
    """
    from tqdm.auto import tqdm

    from visionssl import augment as augmentations

    fraction = check_fraction(fraction)
    _check_options(epochs, batch_size, optimizer, val_fraction, warmup, layer_decay)
    for name, ds in (("train", train_set), ("test", test_set)):
        if ds.targets is None:
            raise DataError(f"fine-tuning needs labelled train and test sets; the {name} set {ds.name!r} has no labels")
    device = resolve_device(device)
    labels = torch.as_tensor(train_set.targets).long()
    classes = train_set.classes.get(train_set.label) if train_set.classes else None
    indices, record = label_subset(labels, fraction, seed, classes)
    keep, held = holdout_split(labels[indices], val_fraction, seed)
    train_idx, val_idx = indices[keep], indices[held]
    record.update(train=len(train_idx), held_out=len(val_idx), dataset=train_set.name, label=train_set.label)
    num_classes = max(train_set.num_classes, 1 + int(labels.max()), 1 + int(torch.as_tensor(test_set.targets).max()))

    image_size = int(image_size or train_set.images.shape[-1])
    channels = input_channels(backbone)
    views = augmentations.create(augment, image_size=image_size, channels=channels).to(device)
    plain = augmentations.create("eval", image_size=image_size, channels=channels).to(device)
    torch.manual_seed(seed)  # the head's initialisation
    model = _with_head(copy.deepcopy(backbone), num_classes, plain, train_set, device)
    vit = is_vit(backbone)
    opt_name = optimizer if optimizer != "auto" else ("adamw" if vit else "sgd")
    layer_decay = layer_decay if layer_decay is not None else (0.75 if vit else 1.0)
    base = 1e-3 if opt_name == "adamw" else 0.05
    lr = lr if lr is not None else base * batch_size / 256
    weight_decay = weight_decay if weight_decay is not None else (0.05 if opt_name == "adamw" else 0.0)
    opt = _optimizer(model, opt_name, lr, weight_decay, momentum, layer_decay)
    batches_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    total = epochs * batches_per_epoch
    warmup_steps = round(warmup * total)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]

    g = torch.Generator().manual_seed(seed)
    y_all = labels.to(device)
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_state, best_epoch, step = None, epochs, 0
    started = time.perf_counter()
    cuda = device.type == "cuda"
    for epoch in tqdm(range(1, epochs + 1), desc=f"fine-tune ({fraction:g} of labels)", disable=not progress):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        # near-equal batches: never a single image, which BatchNorm cannot normalise in training
        chunks = torch.tensor_split(order, batches_per_epoch) if len(order) > 1 else [order]
        loss_sum = torch.zeros((), device=device)
        for idx in chunks:
            scale = (
                (step + 1) / warmup_steps if step < warmup_steps else _cosine(step - warmup_steps, total - warmup_steps)
            )
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
            x = views(train_set.images[idx].to(device, non_blocking=True))[0]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y_all[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            step += 1
        train_loss = float(loss_sum) / len(order)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"fine-tuning loss became {train_loss} in epoch {epoch} at lr {lr:g}; try a smaller lr (--lr)"
            )
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": round(train_loss, 6)}
        if len(val_idx):
            val_logits = _logits(model, train_set.images[val_idx], plain, batch_size, device)
            val_y = labels[val_idx]
            entry["val_top1"] = rank_accuracy(val_logits, val_y)["top1"]
            entry["val_loss"] = round(float(F.cross_entropy(val_logits, val_y)), 6)
            score = (entry["val_top1"], -entry["val_loss"])
            if best is None or score > best:
                best, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        entry["seconds"] = round(time.perf_counter() - started, 3)
        history.append(entry)
    if best_state is not None:
        model.load_state_dict(best_state)
    test = rank_accuracy(_logits(model, test_set.images, plain, batch_size, device), test_set.targets.long())
    result: dict[str, Any] = {
        **test,
        "best_epoch": best_epoch,
        "val_top1": history[best_epoch - 1].get("val_top1"),
        "selection": "held-out top-1" if len(val_idx) else "last epoch (no held-out images)",
        "epochs": epochs,
        "optimizer": opt_name,
        "lr": lr,
        "weight_decay": weight_decay,
        "layer_decay": layer_decay,
        "batch_size": batch_size,
        "augment": augment,
        "image_size": image_size,
        "test": len(test_set),
        "seconds": round(time.perf_counter() - started, 3),
        "history": history,
        "subset": record,
    }
    if return_model:
        result["model"] = model.cpu().eval()
    return result


def is_vit(backbone: nn.Module) -> bool:
    """True for a vision transformer (patch embedding + blocks), which gets layer-wise learning-rate decay.

    Example:
        >>> import visionssl as vs
        >>> is_vit(vs.create_backbone("resnet10t_cifar"))
        False
    """
    return hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks")


def _check_options(epochs, batch_size, optimizer, val_fraction, warmup, layer_decay) -> None:
    if not (isinstance(epochs, int) and epochs >= 1 and isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"epochs and batch_size must be whole numbers >= 1, got {epochs!r} and {batch_size!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown fine-tuning optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not 0 <= warmup < 1:
        raise ConfigError(f"warmup must be a share of the steps in [0, 1), got {warmup!r}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay!r}")


def _with_head(backbone: nn.Module, num_classes: int, plain: nn.Module, dataset, device: torch.device) -> nn.Module:
    dim = getattr(backbone, "num_features", None)
    backbone.to(device)
    if not dim:
        with torch.no_grad():
            dim = backbone.eval()(plain(dataset.images[:1].to(device))[0]).shape[1]
    head = nn.Linear(int(dim), num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model = nn.Sequential(backbone, head).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _optimizer(model: nn.Sequential, name: str, lr: float, weight_decay: float, momentum: float, layer_decay: float):
    backbone, head = model[0], model[1]
    if layer_decay < 1:
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=layer_decay)
        for group in groups:
            group["lr"] = lr * group.pop("lr_scale")
    else:
        decay = [p for p in backbone.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in backbone.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups.append({"params": [head.weight], "weight_decay": weight_decay, "lr": lr})
    groups.append({"params": [head.bias], "weight_decay": 0.0, "lr": lr})
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))


def _logits(model: nn.Module, images: torch.Tensor, plain: nn.Module, batch_size: int, device) -> torch.Tensor:
    """Class scores of ``images`` on eval views (float32, CPU); the model is left in eval mode."""
    return batched_features(model, images, lambda x: plain(x)[0], batch_size=max(batch_size, 256), device=device)
