"""Linear probe: multinomial logistic regression on frozen features, a whole regularisation sweep at once.

Two solvers, both training every setting of the sweep side by side as one batched model:

- ``"lbfgs"`` (default for features that fit in memory; ``probe_lbfgs``): full-batch L-BFGS to the
  L2-regularised optimum, as scikit-learn's ``LogisticRegression(solver="lbfgs")``, over log-spaced inverse
  strengths ``Cs`` (scikit-learn's convention: minimise ``C * sum CE + 0.5 * ||W||^2``, bias unpenalised).
  Below ``cv_max_samples`` training samples C is chosen by stratified, seeded k-fold cross-validation (all
  folds x all Cs in one model), above it on a stratified validation split; the chosen C is then refit on the
  whole training split (warm-started from the selection's weights) and scored on the test split.
- ``"sgd"`` (``probe_sgd``): minibatch SGD / AdamW heads over (learning rate, weight decay) pairs with early
  stopping on a validation split, for features too many for full-batch passes.

Features are standardised with the training split's per-dimension mean and std (``normalize``) first.

``linear_probe_classic`` (``probe_classic``) is the protocol of solo-learn, LightlySSL and VISSL, for comparison
with published numbers: augmented images through the frozen backbone every epoch, SGD with a cosine schedule.

Example:
    >>> import torch, visionssl as vs
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(200) % 4
    >>> x = torch.randn(200, 16, generator=g) + 3 * torch.nn.functional.one_hot(y, 16)
    >>> out = vs.eval.linear_probe(x[:150], y[:150], x[150:], y[150:])
    >>> out["top1"] > 90, out["solver"], out["selection"], len(out["sweep"])
    (True, 'lbfgs', '5-fold', 7)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from visionssl.backbones.features import resolve_device
from visionssl.errors import ConfigError, DataError
from visionssl.eval.knn import Array, check_labels, rank_accuracy
from visionssl.eval.probe_classic import linear_probe_classic
from visionssl.eval.probe_lbfgs import fit_heads, stratified_kfold
from visionssl.eval.probe_sgd import Normalizer, train_heads

SOLVERS = ("auto", "lbfgs", "sgd")
OPTIMIZERS = ("sgd", "adamw")
NORMALIZATIONS = ("standardize", "batchnorm", "none")
DEFAULT_CS = tuple(10.0**k for k in range(-4, 3))  # 1e-4 ... 100: strong to nearly none
LBFGS_MEMORY_BYTES = 8 * 2**30  # "auto" picks SGD when L-BFGS's working set would pass this

__all__ = ["linear_probe", "linear_probe_classic", "stratified_kfold", "holdout_split"]


def linear_probe(
    train_x: Array,
    train_y: Array,
    test_x: Array,
    test_y: Array,
    *,
    solver: str = "auto",
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    cv_max_samples: int = 20_000,
    max_iter: int = 100,
    tol: float = 1e-4,
    lrs: Sequence[float] | None = None,
    weight_decays: Sequence[float] | None = None,
    epochs: int | None = None,
    batch_size: int | None = 1024,
    optimizer: str | None = None,
    normalize: str | None = "standardize",
    val_fraction: float = 0.1,
    patience: int | None = None,
    refit: bool = True,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
    log_dir: str | os.PathLike | None = None,
) -> dict:
    """Fits a sweep of logistic-regression heads at once, picks one on the training split, scores it on test.

    Args:
        train_x, test_x: features (N, D), (Q, D); torch tensors or numpy arrays.
        train_y, test_y: integer class labels (N,), (Q,).
        solver: ``"lbfgs"`` (full batch, to the regularised optimum), ``"sgd"`` (minibatch sweep below), or
            ``"auto"``: SGD when an SGD-only option (``lrs``, ``weight_decays``, ``epochs``, ``optimizer``,
            ``patience``, ``normalize="batchnorm"``) is given or L-BFGS's working set (about
            ``N * len(Cs) * folds * C`` logits plus its memory) would pass 8 GiB; L-BFGS otherwise.
        Cs: L-BFGS: inverse regularisation strengths, scikit-learn's ``C`` (penalty ``1 / (C * n)`` on the
            mean cross entropy; equivalent SGD weight decay ``1 / (C * n)``). Default ``1e-4 ... 100``.
        folds: L-BFGS: k of the stratified, seeded k-fold cross-validation that picks C (highest mean fold
            accuracy, lowest mean fold loss among equals).
        cv_max_samples: L-BFGS: from this many training samples on, C is picked on a validation split
            (``val_fraction``) instead of by k-fold.
        max_iter, tol: L-BFGS iterations per head and gradient tolerance (``max |grad| <= tol``), as
            scikit-learn's.
        lrs, weight_decays: SGD: the sweep; every pair is one head (default ``0.01 0.03 0.1 0.3 1`` x
            ``0 1e-5 1e-4 1e-3 1e-2 1e-1``). Weight decay is decoupled for AdamW (as in
            ``torch.optim.AdamW``) and added to the gradient for SGD (as in ``torch.optim.SGD``).
        epochs: SGD: maximum passes over the training features (cosine learning-rate schedule; default 100).
        batch_size: SGD: features per step; None: full batch.
        optimizer: SGD: ``"sgd"`` (momentum 0.9, the default) or ``"adamw"``. With its weight decay SGD is L2-regularised
            logistic regression, while Adam's per-coordinate steps fit noise dimensions as fast as signal ones.
        normalize: ``"standardize"`` (per-dimension mean and std of the training features), ``"batchnorm"``
            (SGD only: batch statistics while training, running statistics after), or ``"none"``/None.
        val_fraction: share of every class held out for choosing the setting (stratified, seeded): always for
            SGD, for L-BFGS from ``cv_max_samples`` on. SGD: 0 is allowed only for a single setting.
        patience: SGD: a head stops after this many epochs (default 10) without a better validation accuracy (or an equal
            one with a lower validation loss); so each head ends exactly as it would have trained alone.
        refit: retrain the chosen setting on the whole training split before testing (SGD: for its best
            number of epochs); False: test the chosen head as selected (L-BFGS with k-fold: the mean of the
            fold heads).
        num_classes: default: largest label + 1.
        device: default: CUDA when available.
        seed: seeds the folds / validation split, the batch order and nothing else (heads start at zero).
        progress: SGD: show a progress bar over epochs.
        log_dir: SGD: write TensorBoard scalars (per-head validation accuracy and training loss) there.

    Returns:
        ``top1``, ``top5`` (test, percent; top-5 over ``min(5, C)`` classes), ``solver``, ``selection``
        (``"5-fold"``, ``"validation"`` or ``"none"``), ``C`` (L-BFGS; None for SGD), ``lr`` (SGD; None for
        L-BFGS), ``weight_decay`` (SGD's, or L-BFGS's equivalent ``1 / (C * N)``), ``val_top1`` (mean fold or
        validation accuracy of the chosen setting), ``best_epoch`` / ``epochs_run`` (SGD; L-BFGS: the refit's
        and the most iterations of any head), and ``sweep``: one dict per setting with its ``val_top1``.

    Example:
        >>> x, y = torch.randn(120, 4), torch.arange(120) % 3
        >>> out = linear_probe(x, y, x, y, Cs=(0.1, 1.0), folds=3)
        >>> sorted(out)  # doctest: +NORMALIZE_WHITESPACE
        ['C', 'best_epoch', 'epochs_run', 'lr', 'selection', 'solver', 'sweep', 'top1', 'top5', 'val_top1',
         'weight_decay']
    """
    train_x, test_x = _matrix(train_x, "train_x"), _matrix(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"feature dimensions differ: train_x has {train_x.shape[1]}, test_x has {test_x.shape[1]}")
    train_y, test_y = check_labels(train_y, "train_y", len(train_x)), check_labels(test_y, "test_y", len(test_x))
    num_classes = num_classes or 1 + int(max(train_y.max(), test_y.max()))
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    sgd_only = (lrs, weight_decays, epochs, optimizer, patience)
    if solver == "auto" and (any(v is not None for v in sgd_only) or normalize == "batchnorm"):
        solver = "sgd"
    if solver == "auto":
        n, dim = train_x.shape
        heads = len(Cs) * (folds if n < cv_max_samples else 1)
        need = 4 * heads * num_classes * (3 * n + 2 * 10 * (dim + 1))
        solver = "lbfgs" if need <= LBFGS_MEMORY_BYTES and normalize != "batchnorm" else "sgd"
    device = resolve_device(device)
    if solver == "lbfgs":
        _check_lbfgs(Cs, folds, max_iter, tol, normalize, val_fraction, train_y, cv_max_samples)
        train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
        return _lbfgs_probe(
            train_x,
            train_y,
            test_x,
            test_y,
            [float(c) for c in Cs],
            folds,
            cv_max_samples,
            max_iter,
            tol,
            normalize or "none",
            val_fraction,
            refit,
            num_classes,
            seed,
        )
    lrs = (0.01, 0.03, 0.1, 0.3, 1.0) if lrs is None else lrs
    weight_decays = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1) if weight_decays is None else weight_decays
    epochs, patience = 100 if epochs is None else epochs, 10 if patience is None else patience
    optimizer = optimizer or "sgd"
    settings = [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]
    _check_options(settings, epochs, batch_size, optimizer, normalize, val_fraction, patience)
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    normalize = normalize or "none"
    options = dict(num_classes=num_classes, batch_size=batch_size, optimizer=optimizer, normalize=normalize, seed=seed)
    if val_fraction > 0:
        fit_idx, val_idx = (i.to(device) for i in holdout_split(train_y.cpu(), val_fraction, seed))
        if len(val_idx) == 0:
            raise ConfigError(f"val_fraction={val_fraction} leaves no validation sample; raise it or pass 0")
        writer = _summary_writer(log_dir)
        try:
            sweep = train_heads(
                train_x[fit_idx],
                train_y[fit_idx],
                settings,
                epochs,
                (train_x[val_idx], train_y[val_idx]),
                patience,
                progress,
                writer,
                **options,
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
        heads = train_heads(
            train_x, train_y, [(lr, wd)], epochs, None, patience, progress, None, stop_after=best_epoch, **options
        ).best_heads(0)

    logits = heads(test_x)[:, 0]
    result = {
        **rank_accuracy(logits.cpu(), test_y.cpu()),
        "solver": "sgd",
        "C": None,
        "lr": lr,
        "weight_decay": wd,
        "selection": "validation" if val_fraction > 0 else "none",
    }
    if val_fraction > 0:
        result.update(
            val_top1=float(sweep.best_val[best]),
            best_epoch=best_epoch,
            epochs_run=sweep.epochs_run,
            sweep=[
                {"lr": s[0], "weight_decay": s[1], "val_top1": float(v), "best_epoch": int(e)}
                for s, v, e in zip(settings, sweep.best_val, sweep.best_epoch)
            ],
        )
    else:
        result.update(val_top1=float("nan"), best_epoch=epochs, epochs_run=epochs, sweep=[])
    return result


def holdout_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(keep, held_out)``: ``round(fraction * n_c)`` random samples of every class ``c`` are held out,
    at least one and never all (a class with a single sample stays in ``keep``). Seeded: the same call gives
    the same split.

    Example:
        >>> keep, held = holdout_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 0.5)
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


def _matrix(x: Array, name: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().float().cpu()
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{name} must be a non-empty (N, D) feature matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"{name} holds NaN or infinite values; features must be finite")
    return x


def _check_options(settings, epochs, batch_size, optimizer, normalize, val_fraction, patience) -> None:
    if not settings:
        raise ConfigError("lrs and weight_decays must each hold at least one value")
    if any(not lr > 0 for lr, _ in settings) or any(not wd >= 0 for _, wd in settings):
        raise ConfigError(f"learning rates must be > 0 and weight decays >= 0, got {settings}")
    if epochs < 1 or patience < 1:
        raise ConfigError(f"epochs and patience must be >= 1, got epochs={epochs}, patience={patience}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 or None (full batch), got {batch_size}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if (normalize or "none") not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)} or None")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 and len(settings) > 1:
        raise ConfigError(f"a sweep of {len(settings)} settings needs a validation split; set val_fraction > 0")


def _summary_writer(log_dir):
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


def _lbfgs_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    Cs,
    folds,
    cv_max_samples,
    max_iter,
    tol,
    normalize,
    val_fraction,
    refit,
    num_classes,
    seed,
) -> dict:
    """Picks C by k-fold (or a validation split) with all folds x all Cs as one batch of heads, then refits."""
    normalizer = Normalizer(normalize, train_x)
    x, test_x = normalizer(train_x), normalizer(test_x)
    n, device = len(x), x.device
    if n < cv_max_samples:
        fold = stratified_kfold(train_y.cpu(), folds, seed).to(device)
        held = fold.view(-1, 1) == torch.arange(folds, device=device)  # (N, k): sample is in fold f
        selection = f"{folds}-fold"
    else:
        held = torch.zeros(n, 1, dtype=torch.bool, device=device)
        held[holdout_split(train_y.cpu(), val_fraction, seed)[1].to(device)] = True
        selection = "validation"
    k, m = held.shape[1], len(Cs)
    fit_mask = (~held).repeat_interleave(m, dim=1)  # heads fold-major: head f * m + j
    c_heads = torch.tensor(Cs * k, dtype=x.dtype)
    # two classes: scikit-learn fits one weight vector w = W1 - W0; the multinomial optimum has W1 = -W0 = w / 2,
    # so its penalty 0.5 * l2 * (|W0|^2 + |W1|^2) is half of 0.5 * l2 * |w|^2 unless l2 is doubled
    binary = 2.0 if num_classes == 2 else 1.0
    l2 = binary / (c_heads * fit_mask.sum(0).cpu().to(x.dtype))
    weight, bias, iters = fit_heads(x, train_y, num_classes, l2, fit_mask.to(x.dtype), max_iter=max_iter, tol=tol)
    logits = _head_logits(x, weight, bias).view(n, k, m, num_classes)
    correct = (logits.argmax(-1) == train_y.view(-1, 1, 1)).to(x.dtype)  # (N, k, m)
    loss = torch.nn.functional.cross_entropy(
        logits.permute(0, 3, 1, 2), train_y.view(-1, 1, 1).expand(-1, k, m), reduction="none"
    )
    share = held.to(x.dtype) / held.sum(0)  # per fold: mean over its held-out samples
    fold_acc = 100.0 * torch.einsum("nk,nkm->km", share, correct)
    val_acc, val_loss = fold_acc.mean(0).cpu(), torch.einsum("nk,nkm->km", share, loss).mean(0).cpu()
    top = torch.nonzero(val_acc == val_acc.max()).flatten()
    best = int(top[torch.argmin(val_loss[top])])
    chosen = [f * m + best for f in range(k)]
    w0, b0 = weight[chosen].mean(0, keepdim=True), bias[chosen].mean(0, keepdim=True)
    refit_iters = 0
    if refit:  # warm start from the selection's heads, as scikit-learn's LogisticRegressionCV does
        l2_all = torch.tensor([binary / (Cs[best] * n)], dtype=x.dtype)
        w0, b0, it = fit_heads(x, train_y, num_classes, l2_all, init=(w0, b0), max_iter=max_iter, tol=tol)
        refit_iters = int(it[0])
    result = {
        **rank_accuracy(_head_logits(test_x, w0, b0)[:, 0].cpu(), test_y.cpu()),
        "solver": "lbfgs",
        "selection": selection,
        "C": Cs[best],
        "lr": None,
        "weight_decay": binary / (Cs[best] * n),
        "val_top1": float(val_acc[best]),
        "best_epoch": refit_iters,
        "epochs_run": int(iters.max()),
        "sweep": [
            {"C": c, "weight_decay": binary / (c * n), "val_top1": float(a), "val_loss": float(v)}
            for c, a, v in zip(Cs, val_acc, val_loss)
        ],
    }
    return result


def _head_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits (N, H, C) of heads with weights (H, D, C) and biases (H, C), from one matrix multiply."""
    h, dim, c = weight.shape
    return torch.addmm(bias.reshape(1, -1), x, weight.permute(1, 0, 2).reshape(dim, h * c)).view(len(x), h, c)


def _check_lbfgs(Cs, folds, max_iter, tol, normalize, val_fraction, train_y, cv_max_samples) -> None:
    if not Cs or any(not c > 0 for c in Cs):
        raise ConfigError(f"Cs must hold at least one value, all > 0, got {tuple(Cs)}")
    if max_iter < 1 or not tol > 0:
        raise ConfigError(f"max_iter must be >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    if (normalize or "none") not in ("standardize", "none"):
        raise ConfigError(f"normalize {normalize!r} is not for the lbfgs solver; valid: standardize, none")
    if len(train_y) < cv_max_samples:
        if not 2 <= folds <= len(train_y):
            raise ConfigError(f"folds must be in [2, {len(train_y)}] (the training samples), got {folds}")
    elif not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1) to pick C on {len(train_y)} samples, got {val_fraction}")
