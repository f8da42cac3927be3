"""The labelled subset of semi-supervised fine-tuning: a class-balanced, seeded fraction of the training labels.

Every class gives the same fraction of its images (rounded, at least one), drawn from one seeded permutation
per class, so the subset depends only on the labels, the fraction and the seed: every checkpoint is fine-tuned
on the same images, and a smaller fraction's subset is contained in a larger one's. ``label_subset`` also
returns the record (counts per class and a sha256 of the indices) that the results carry.

Example:
    >>> import torch
    >>> idx, record = label_subset(torch.tensor([0] * 20 + [1] * 10), 0.1, seed=0)
    >>> len(idx), record["per_class"]
    (3, {'0': 2, '1': 1})
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from visionssl.errors import ConfigError, DataError

__all__ = ["check_fraction", "label_subset"]


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in (0, 1]; a ``ConfigError`` naming the value otherwise (0, > 1, NaN, text).

    Example:
        >>> check_fraction(0.1)
        0.1
        >>> check_fraction(0)
        Traceback (most recent call last):
        ...
        visionssl.errors.ConfigError: fraction must be a number in (0, 1] (e.g. 0.01, 0.1 or 1.0), got 0
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= 1:  # also False for NaN
        raise ConfigError(f"fraction must be a number in (0, 1] (e.g. 0.01, 0.1 or 1.0), got {fraction!r}")
    return value


def label_subset(
    labels: torch.Tensor, fraction: float, seed: int = 0, classes: Sequence[str] | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sorted indices of ``round(fraction * n_c)`` seeded images of every class ``c``, and their record.

    Args:
        labels: class index of every training image (N,).
        fraction: share of every class's images to keep, in (0, 1]; 1.0 keeps every image.
        seed: picks the images; the same labels, fraction and seed give the same subset.
        classes: class names for the record (default: the class indices as text).

    Returns:
        ``(indices, record)``; the record holds ``fraction``, ``seed``, ``images``, ``per_class`` (class ->
        count) and ``indices_sha256`` (of the sorted indices as little-endian int64).

    Raises:
        ConfigError: a bad fraction, or one that leaves a class without a labelled image (the message says the
            smallest fraction that gives every class one).
        DataError: no labels.

    Example:
        >>> import torch
        >>> y = torch.arange(100) % 4
        >>> a, _ = label_subset(y, 0.1, seed=0)
        >>> b, _ = label_subset(y, 0.1, seed=0)
        >>> c, _ = label_subset(y, 0.1, seed=1)
        >>> bool((a == b).all()), bool((a == c).all()), y[a].bincount().tolist()
        (True, False, [3, 3, 3, 3])
    """
    fraction = check_fraction(fraction)
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if labels.numel() == 0:
        raise DataError("fine-tuning needs labelled training images; the training split has none")
    present = torch.unique(labels).tolist()
    names = [str(c) for c in range(max(present) + 1)] if classes is None else [str(c) for c in classes]
    counts = {c: int((labels == c).sum()) for c in present}
    smallest = min(present, key=lambda c: counts[c])
    if _keep(fraction, counts[smallest]) < 1:
        needed = math.ceil(0.5 / counts[smallest] * 1e4) / 1e4
        raise ConfigError(
            f"fraction {fraction:g} leaves class {_name(names, smallest)!r} ({counts[smallest]} training images) "
            f"without a labelled image; every class needs at least one, which takes fraction >= {needed:g}"
        )
    g = torch.Generator().manual_seed(int(seed))
    chosen, per_class = [], {}
    for c in present:  # one permutation per class, in class order: a larger fraction extends a smaller one
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        take = _keep(fraction, len(idx))
        chosen.append(idx[:take])
        per_class[_name(names, c)] = take
    indices = torch.cat(chosen).sort().values
    record = {
        "fraction": fraction,
        "seed": int(seed),
        "images": len(indices),
        "per_class": per_class,
        "indices_sha256": hashlib.sha256(indices.numpy().astype("<i8").tobytes()).hexdigest(),
    }
    return indices, record


def _keep(fraction: float, n: int) -> int:
    """Images kept of a class of ``n``: ``fraction * n`` rounded half up, never more than ``n``."""
    return min(n, math.floor(fraction * n + 0.5))


def _name(names: Sequence[str], c: int) -> str:
    return names[c] if 0 <= c < len(names) else str(c)
