"""Linear probe: multinomial logistic regression on frozen features, a whole hyperparameter sweep at once.

``linear_probe`` trains one linear head per (learning rate, weight decay) pair *side by side*: the heads are
one weight tensor (D, C, H) and a single matrix multiply gives the logits of all of them. The loss is the
sum over heads of each head's mean cross entropy, so every head gets exactly its own gradient; SGD or AdamW
then applies each head's own learning rate and weight decay (a batched update written here, as
``torch.optim`` would need one parameter group, and one small kernel launch, per head). A stratified, seeded
validation split carved from the training features picks the setting (early stopping on validation
accuracy); the chosen setting is then refit on the whole training split for its best number of epochs and
scored on the test split.

``linear_probe_classic`` is the protocol of solo-learn, LightlySSL and VISSL, for comparison with
published numbers: augmented images through the frozen backbone every epoch, SGD with a cosine schedule.

Example:
    >>> import torch, visionssl as vs
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(200) % 4
    >>> x = torch.randn(200, 16, generator=g) + 3 * torch.nn.functional.one_hot(y, 16)
    >>> out = vs.eval.linear_probe(x[:150], y[:150], x[150:], y[150:], lrs=(0.01, 0.1), weight_decays=(0.0,))
    >>> out["top1"] > 90, len(out["sweep"])
    (True, 2)
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionssl.eval.features import extract_features, input_channels, resolve_device
from visionssl.eval.knn import Array, check_labels, rank_accuracy

OPTIMIZERS = ("sgd", "adamw")
NORMALIZATIONS = ("standardize", "batchnorm", "none")

__all__ = ["linear_probe", "linear_probe_classic", "stratified_split"]


def linear_probe(
    train_x: Array,
    train_y: Array,
    test_x: Array,
    test_y: Array,
    *,
    lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
    epochs: int = 100,
    batch_size: int | None = 1024,
    optimizer: str = "sgd",
    normalize: str | None = "standardize",
    val_fraction: float = 0.1,
    patience: int = 10,
    refit: bool = True,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
    log_dir: str | os.PathLike | None = None,
) -> dict:
    """Trains ``len(lrs) * len(weight_decays)`` logistic-regression heads at once and scores the best.

    Args:
        train_x, test_x: features (N, D), (Q, D); torch tensors or numpy arrays.
        train_y, test_y: integer class labels (N,), (Q,).
        lrs, weight_decays: the sweep; every pair is one head. Weight decay is decoupled for AdamW (as in
            ``torch.optim.AdamW``) and added to the gradient for SGD (as in ``torch.optim.SGD``).
        epochs: maximum passes over the training features (cosine learning-rate schedule over them).
        batch_size: features per step; None: full batch.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adamw"``. SGD is the default: with its weight decay it
            is L2-regularised logistic regression, while Adam's per-coordinate steps fit noise dimensions as
            fast as signal ones and tested up to 4 points worse on overlapping classes.
        normalize: ``"standardize"`` (per-dimension mean and std of the training features), ``"batchnorm"``
            (batch statistics while training, running statistics after: a BatchNorm without affine
            parameters in front of the heads), or ``"none"``/None.
        val_fraction: share of every class held out for choosing the setting (stratified, seeded). 0 is
            allowed only for a single setting, which then trains for ``epochs``.
        patience: a head stops (its weights freeze) after this many epochs without a better validation
            accuracy (or an equal one with a lower validation loss); the sweep ends when every head has
            stopped. So each head ends exactly as it would have trained alone.
        refit: retrain the chosen setting on the whole training split (train + validation) for its best
            number of epochs before testing; False: test the chosen head's best-validation weights.
        num_classes: default: largest label + 1.
        device: default: CUDA when available.
        seed: seeds the validation split, the batch order and nothing else (heads start at zero).
        progress: show a progress bar over epochs.
        log_dir: write TensorBoard scalars (per-head validation accuracy and training loss) there.

    Returns:
        ``top1``, ``top5`` (test, percent; top-5 over ``min(5, C)`` classes), ``lr``, ``weight_decay``,
        ``val_top1`` and ``best_epoch`` of the chosen head, ``epochs_run`` of the sweep, and ``sweep``: one
        dict per head with ``lr``, ``weight_decay``, ``val_top1``, ``best_epoch``.

    Example:
        >>> x, y = torch.randn(120, 4), torch.arange(120) % 3
        >>> out = linear_probe(x, y, x, y, lrs=(0.1,), weight_decays=(0.0, 0.1), epochs=5)
        >>> sorted(out)
        ['best_epoch', 'epochs_run', 'lr', 'sweep', 'top1', 'top5', 'val_top1', 'weight_decay']
    """
    train_x, test_x = _matrix(train_x, "train_x"), _matrix(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"feature dimensions differ: train_x has {train_x.shape[1]}, test_x has {test_x.shape[1]}")
    train_y, test_y = check_labels(train_y, "train_y", len(train_x)), check_labels(test_y, "test_y", len(test_x))
    num_classes = num_classes or 1 + int(max(train_y.max(), test_y.max()))
    settings = [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]
    _check_options(settings, epochs, batch_size, optimizer, normalize, val_fraction, patience)
    device = resolve_device(device)
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    normalize = normalize or "none"
    options = dict(num_classes=num_classes, batch_size=batch_size, optimizer=optimizer, normalize=normalize, seed=seed)

    if val_fraction > 0:
        fit_idx, val_idx = (i.to(device) for i in stratified_split(train_y.cpu(), val_fraction, seed))
        if len(val_idx) == 0:
            raise ValueError(f"val_fraction={val_fraction} leaves no validation sample; raise it or pass 0")
        writer = _summary_writer(log_dir)
        try:
            sweep = _train_heads(
                train_x[fit_idx], train_y[fit_idx], settings, epochs, (train_x[val_idx], train_y[val_idx]),
                patience, progress, writer, **options,
            )
        finally:
            if writer is not None:
                writer.close()
        best = sweep.best_setting()
        lr, wd, best_epoch = *settings[best], int(sweep.best_epoch[best])
        heads = sweep.best_heads(best)
    else:
        best, (lr, wd), best_epoch = 0, settings[0], epochs
    if refit or val_fraction == 0:
        heads = _train_heads(train_x, train_y, [(lr, wd)], epochs, None, patience, progress, None,
                             stop_after=best_epoch, **options).best_heads(0)

    logits = heads(test_x)[:, 0]
    result = {**rank_accuracy(logits.cpu(), test_y.cpu()), "lr": lr, "weight_decay": wd}
    if val_fraction > 0:
        result.update(
            val_top1=float(sweep.best_val[best]), best_epoch=best_epoch, epochs_run=sweep.epochs_run,
            sweep=[{"lr": s[0], "weight_decay": s[1], "val_top1": float(v), "best_epoch": int(e)}
                   for s, v, e in zip(settings, sweep.best_val, sweep.best_epoch)],
        )
    else:
        result.update(val_top1=float("nan"), best_epoch=epochs, epochs_run=epochs, sweep=[])
    return result


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(keep, held_out)``: ``round(fraction * n_c)`` random samples of every class ``c`` are held out,
    at least one and never all (a class with a single sample stays in ``keep``). Seeded: the same call gives
    the same split.

    Example:
        >>> keep, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 0.5)
        >>> len(keep), len(held), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])[held].bincount().tolist()
        (5, 5, [2, 3])
    """
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = min(max(1, round(fraction * len(idx))), len(idx) - 1) if fraction > 0 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


class _Heads:
    """H linear heads over normalised features. The weights are one (D, C, H) tensor (heads last, so that a
    per-head learning rate broadcasts), the biases (C, H)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, normalizer: "_Normalizer"):
        self.weight, self.bias, self.normalizer = weight, bias, normalizer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, H, C) of every head, from one matrix multiply."""
        dim, c, _ = self.weight.shape
        logits = torch.addmm(self.bias.reshape(1, -1), self.normalizer(x), self.weight.reshape(dim, -1))
        return logits.view(len(x), c, -1).transpose(1, 2)


class _Normalizer:
    def __init__(self, kind: str, x: torch.Tensor):
        self.kind = kind
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6)
        self.running_var = x.var(0)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        if self.kind == "standardize":
            return (x - self.mean) / self.std
        if self.kind == "batchnorm":
            return F.batch_norm(x, self.mean, self.running_var, training=train and len(x) > 1, momentum=0.1)
        return x


class _Sweep:
    """What training the heads leaves: per-head best validation accuracy, its epoch and weights."""

    def __init__(self, weight, bias, normalizer, best_val, best_loss, best_epoch, epochs_run):
        self.weight, self.bias, self.normalizer = weight, bias, normalizer
        self.best_val, self.best_loss, self.best_epoch, self.epochs_run = best_val, best_loss, best_epoch, epochs_run

    def best_setting(self) -> int:
        """The head with the best validation accuracy; the lowest validation loss among equals."""
        top = torch.nonzero(self.best_val == self.best_val.max()).flatten()
        return int(top[torch.argmin(self.best_loss[top])])

    def best_heads(self, head: int) -> _Heads:
        return _Heads(self.weight[..., head : head + 1], self.bias[..., head : head + 1], self.normalizer)


@torch.no_grad()
def _train_heads(
    x: torch.Tensor, y: torch.Tensor, settings: list[tuple[float, float]], epochs: int,
    val: tuple[torch.Tensor, torch.Tensor] | None, patience: int, progress: bool, writer,
    *, num_classes: int, batch_size: int | None, optimizer: str, normalize: str, seed: int,
    stop_after: int | None = None,
) -> _Sweep:
    """Trains one head per setting. The gradient of the mean softmax cross entropy is written out,
    ``x^T (softmax(logits) - onehot(y)) / B``: no autograd graph, a handful of batched ops per step."""
    from tqdm.auto import tqdm

    n, dim, h, c = len(x), x.shape[1], len(settings), num_classes
    normalizer = _Normalizer(normalize, x)
    per_batch_norm = normalize == "batchnorm"
    x_norm = x if per_batch_norm else normalizer(x)  # normalised once, not every step
    onehot = F.one_hot(y, c).to(x.dtype).unsqueeze(2)  # (N, C, 1)
    weight = torch.zeros(dim, c, h, device=x.device)
    bias = torch.zeros(c, h, device=x.device)
    heads = _Heads(weight, bias, normalizer)
    lr_all = torch.tensor([s[0] for s in settings], device=x.device)
    wd_all = torch.tensor([s[1] for s in settings], device=x.device)
    opt = _BatchedAdamW([weight, bias]) if optimizer == "adamw" else _BatchedSGD([weight, bias])
    batch = min(batch_size or n, n)
    total_steps, step = epochs * math.ceil(n / batch), 0
    g = torch.Generator().manual_seed(seed)
    best_val = torch.full((h,), -1.0, device=x.device)
    best_loss = torch.full((h,), math.inf, device=x.device)
    best_epoch = torch.zeros(h, dtype=torch.long, device=x.device)
    active = torch.ones(h, dtype=torch.bool, device=x.device)
    best_w, best_b = weight.clone(), bias.clone()
    epoch = 0
    with tqdm(range(1, (stop_after or epochs) + 1), desc=f"linear probe ({h} heads)", disable=not progress,
              leave=False) as bar:
        for epoch in bar:
            order = torch.randperm(n, generator=g).to(x.device) if batch < n else torch.arange(n, device=x.device)
            live = torch.nonzero(active).flatten()  # stopped heads cost nothing: work on the live ones only
            whole = len(live) == h
            params = [weight, bias] if whole else [weight[..., live], bias[..., live]]
            state = opt.state if whole else [t[..., live] for t in opt.state]
            lr, wd = lr_all[live], wd_all[live]
            train_loss = torch.zeros(len(live), device=x.device)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                xb = normalizer(x[idx], train=True) if per_batch_norm else x_norm.index_select(0, idx)
                w, b = params
                # logits laid out (B, C, H): a softmax over dim 1 is several times faster than over a short last dim
                probs = torch.addmm(b.reshape(1, -1), xb, w.reshape(dim, -1)).view(len(idx), c, -1).softmax(1)
                if writer is not None:
                    picked = probs.gather(1, y[idx].view(-1, 1, 1).expand(-1, 1, len(live))).squeeze(1)
                    train_loss -= picked.clamp_min(1e-12).log().sum(0) / n
                probs -= onehot.index_select(0, idx)  # now B x dLoss/dlogits
                grad_w = torch.mm(xb.T, probs.view(len(idx), -1)).view_as(w).div_(len(idx))
                grad_b = probs.sum(0).div_(len(idx))
                opt.step(params, [grad_w, grad_b], state, lr * (0.5 * (1 + math.cos(math.pi * step / total_steps))), wd)
                step += 1
            if not whole:
                weight[..., live], bias[..., live] = params
                for full, part in zip(opt.state, state):
                    full[..., live] = part
            if val is None:
                continue
            val_logits = heads(val[0])
            val_acc = 100.0 * (val_logits.argmax(-1) == val[1].view(-1, 1)).float().mean(0)
            val_loss = F.cross_entropy(val_logits.transpose(1, 2), val[1].view(-1, 1).expand(-1, h), reduction="none")
            val_loss = val_loss.mean(0)
            # accuracy moves in steps of 1 / len(val): among equal accuracies the lower loss is better
            improved = active & ((val_acc > best_val) | ((val_acc == best_val) & (val_loss < best_loss)))
            best_val = torch.where(improved, val_acc, best_val)
            best_loss = torch.where(improved, val_loss, best_loss)
            best_epoch = torch.where(improved, epoch, best_epoch)
            best_w[..., improved], best_b[..., improved] = weight[..., improved], bias[..., improved]
            bar.set_postfix(best_val=f"{float(best_val.max()):.2f}", heads=len(live))
            if writer is not None:
                for j, i in enumerate(live.tolist()):
                    tag = f"lr={settings[i][0]:g},wd={settings[i][1]:g}"
                    writer.add_scalar(f"linear_probe/val_top1/{tag}", float(val_acc[i]), epoch)
                    writer.add_scalar(f"linear_probe/train_loss/{tag}", float(train_loss[j]), epoch)
            active &= (epoch - best_epoch) < patience  # a stopped head keeps its weights: as if trained alone
            if not active.any():
                break
    if val is None:
        best_w, best_b = weight, bias
        best_epoch = torch.full((h,), epoch, dtype=torch.long)
    return _Sweep(best_w, best_b, normalizer, best_val.cpu(), best_loss.cpu(), best_epoch.cpu(), epoch)


class _BatchedSGD:
    """SGD with momentum (as ``torch.optim.SGD``) on tensors whose LAST dimension indexes the heads, with one
    learning rate and weight decay per head; the first tensor (the weights) is decayed, the rest not."""

    def __init__(self, params: list[torch.Tensor], momentum: float = 0.9):
        self.momentum = momentum
        self.state = [torch.zeros_like(p) for p in params]  # momentum buffers

    @torch.no_grad()
    def step(self, params, grads, state, lr: torch.Tensor, wd: torch.Tensor) -> None:
        for i, (p, g, buf) in enumerate(zip(params, grads, state)):
            buf.mul_(self.momentum).add_(g)
            if i == 0:
                buf.addcmul_(p, wd)  # L2 weight decay, added to the gradient
            p.addcmul_(buf, lr, value=-1)


class _BatchedAdamW:
    """AdamW (as ``torch.optim.AdamW``) on tensors whose LAST dimension indexes the heads, with one learning
    rate and (decoupled) weight decay per head; the first tensor (the weights) is decayed, the rest not."""

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.betas, self.eps, self.t = betas, eps, 0
        self.state = [torch.zeros_like(p) for p in params] + [torch.zeros_like(p) for p in params]  # m..., v...

    @torch.no_grad()
    def step(self, params, grads, state, lr: torch.Tensor, wd: torch.Tensor) -> None:
        self.t += 1
        b1, b2 = self.betas
        moments = zip(state[: len(params)], state[len(params) :])
        for i, (p, g, (m, v)) in enumerate(zip(params, grads, moments)):
            if i == 0:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.sub_(lr / (1 - b1**self.t) * m / denom)


def linear_probe_classic(
    backbone: nn.Module,
    train_set,
    test_set,
    *,
    epochs: int = 100,
    lr: float | None = None,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    augment: bool | str = True,
    batchnorm: bool = False,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The classic protocol: every epoch, augmented images go through the frozen backbone into one linear layer.

    SGD (``lr`` default ``0.1 * batch_size / 256``, momentum, weight decay) with a cosine schedule over all
    steps, as in solo-learn / LightlySSL. The backbone stays in eval mode without gradients. ``augment``:
    True for random resized crop (scale 0.08-1) + horizontal flip, False for the plain eval view, or the name
    of an augmentation preset (its first view is used). ``batchnorm=True`` puts a BatchNorm without affine
    parameters in front of the linear layer (MAE's linear-probe recipe), for features whose scale is far from
    1, such as those of a randomly initialised network. The test split is scored on eval views (its features
    are extracted once, before training, so scoring after every epoch is cheap).

    Returns ``top1``, ``top5`` (percent), ``lr``, ``epochs`` and ``history``: per epoch, the test ``top1`` and
    the ``seconds`` of training so far.

    Example:
        >>> import torch, visionssl as vs
        >>> from visionssl.data.dataset import ImageDataset
        >>> ds = ImageDataset(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8),
        ...                   {"c": torch.arange(8) % 2}, "c", {"c": ["a", "b"]}, "toy")
        >>> out = linear_probe_classic(vs.create_backbone("resnet10t_cifar"), ds, ds, epochs=1, progress=False)
        >>> sorted(out), len(out["history"])
        (['epochs', 'history', 'lr', 'top1', 'top5'], 1)
    """
    import time

    from tqdm.auto import tqdm

    from visionssl import augment as augmentations

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    if train_set.targets is None or test_set.targets is None:
        raise ValueError("the linear probe needs labelled train and test sets")
    device = resolve_device(device)
    image_size = int(image_size or train_set.images.shape[-1])
    channels = input_channels(backbone)
    if augment is True:
        import kornia.augmentation as K

        views = augmentations.MultiView(
            [nn.Sequential(K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0)), K.RandomHorizontalFlip())],
            channels=channels, normalize=augmentations.Normalize(),
        )
    else:
        views = augmentations.create("eval" if augment is False else augment, image_size=image_size, channels=channels)
    views = views.to(device)
    labels = torch.as_tensor(train_set.targets).long()
    num_classes = 1 + int(max(labels.max(), torch.as_tensor(test_set.targets).max()))
    was_training = backbone.training
    backbone.to(device).eval()
    dim = _feature_dim(backbone, views, train_set, device)
    classifier = nn.Linear(dim, num_classes)
    if batchnorm:
        classifier = nn.Sequential(nn.BatchNorm1d(dim, affine=False), classifier)
    classifier = classifier.to(device)
    lr = lr if lr is not None else 0.1 * batch_size / 256
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(train_set)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(n / batch_size))
    g = torch.Generator().manual_seed(seed)
    history = []
    try:
        test_x, test_y = extract_features(backbone, test_set, batch_size, image_size, device, progress=progress)
        test_x = test_x.to(device)
        started = time.perf_counter()
        for epoch in tqdm(range(1, epochs + 1), desc="linear probe (classic)", disable=not progress, leave=False):
            order = torch.randperm(n, generator=g)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if batchnorm and len(idx) < 2:
                    continue  # batch statistics need two samples
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    feats = backbone(views(train_set.images[idx].to(device, non_blocking=True))[0])
                loss = F.cross_entropy(classifier(feats.float()), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            with torch.no_grad():
                logits = classifier.eval()(test_x).cpu()
            classifier.train()
            history.append({"epoch": epoch, "top1": rank_accuracy(logits, test_y)["top1"],
                            "seconds": round(time.perf_counter() - started, 3)})
    finally:
        backbone.train(was_training)
    return {**rank_accuracy(logits, test_y), "lr": lr, "epochs": epochs, "history": history}


def _feature_dim(backbone: nn.Module, views: nn.Module, dataset, device: torch.device) -> int:
    dim = getattr(backbone, "num_features", None)
    if dim:
        return int(dim)
    with torch.no_grad():
        return int(backbone(views(dataset.images[:1].to(device))[0]).shape[1])


def _matrix(x: Array, name: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().float().cpu()
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) feature matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; features must be finite")
    return x


def _check_options(settings, epochs, batch_size, optimizer, normalize, val_fraction, patience) -> None:
    if not settings:
        raise ValueError("lrs and weight_decays must each hold at least one value")
    if any(not lr > 0 for lr, _ in settings) or any(not wd >= 0 for _, wd in settings):
        raise ValueError(f"learning rates must be > 0 and weight decays >= 0, got {settings}")
    if epochs < 1 or patience < 1:
        raise ValueError(f"epochs and patience must be >= 1, got epochs={epochs}, patience={patience}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (full batch), got {batch_size}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if (normalize or "none") not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)} or None")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 and len(settings) > 1:
        raise ValueError(f"a sweep of {len(settings)} settings needs a validation split; set val_fraction > 0")


def _summary_writer(log_dir):
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))
