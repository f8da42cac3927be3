"""The settings of a seconds-long pretraining run on the CPU: 64 synthetic 16 px images, small heads, no kNN.

For smoke tests of the run machinery (checkpoints, resume, signals) and for checking an install; the
tests and ``benchmarks/kill_loop.py`` take them from here. They are ``KEY=VALUE`` overrides, for
``load_config(..., overrides=...)`` or the ``visionssl pretrain`` command line; the backbone is the
caller's (``backbone.name=...`` or ``--backbone``).

Example:
    >>> from visionssl.engine.config import load_config
    >>> cfg = load_config("simclr", overrides=smoke_overrides("optim.batch_size=32", "train.epochs=1"))
    >>> cfg.data.name, cfg.optim.batch_size, cfg.train.knn_every
    ('synthetic:64', 32, -1)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

SMOKE_RUN = (
    "data.name=synthetic:64",
    "data.image_size=16",
    "augment.image_size=16",
    "optim.batch_size=16",
    "optim.warmup_epochs=0",
    "method.proj_hidden_dim=16",
    "method.proj_dim=8",
    "train.knn_every=-1",
    "train.log_every=4",
    "train.progress=false",
)


def smoke_overrides(*changes: str) -> list[str]:
    """``SMOKE_RUN`` with ``changes`` (``KEY=VALUE``) in place of the settings of the same keys, the rest appended.

    Example:
        >>> smoke_overrides("optim.batch_size=32", "train.epochs=2")[3:4], smoke_overrides("train.epochs=2")[-1]
        (['optim.batch_size=32'], 'train.epochs=2')
    """
    given = {change.split("=", 1)[0]: change for change in changes}
    kept = [given.pop(setting.split("=", 1)[0], setting) for setting in SMOKE_RUN]
    return kept + list(given.values())


def smoke_command(
    out: str | os.PathLike, epochs: int, options: Sequence[str] = (), changes: Sequence[str] = ()
) -> list[str]:
    """``python -m visionssl pretrain`` of a smoke run into ``out``: one thread, deterministic, no progress bar,
    with the command-line ``options`` (``--backbone FILE:FN``) and ``smoke_overrides(*changes)``.

    Example:
        >>> smoke_command("runs/smoke", 2, ["--backbone", "resnet10t_cifar"])[3:8]
        ['pretrain', '--out', 'runs/smoke', '--epochs', '2']
    """
    return [
        sys.executable, "-m", "visionssl", "pretrain", "--out", str(out), "--epochs", str(epochs),
        "--threads", "1", "--deterministic", "--no-progress", *options, *smoke_overrides(*changes),
    ]  # fmt: skip
