"""Process-wide settings of a run: precision, seeds and the RNG states a checkpoint carries.

Example:
    >>> import torch
    >>> resolve_precision("auto", torch.device("cuda"))
    'bf16'
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX; read from /proc/cpuinfo).

    On such CPUs oneDNN's bf16 convolutions are 1.5-2x faster than fp32; elsewhere bf16 is emulated
    and slower, so ``train.precision=auto`` keeps fp32 there.

    Example:
        >>> isinstance(cpu_computes_bf16(), bool)
        True
    """
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool = True) -> str:
    """``auto`` -> bf16 on CUDA and on CPUs with hardware bf16 (``cpu_computes_bf16``), else fp32.

    ``cpu_bf16=False`` (a method's ``cpu_bf16`` attribute) keeps fp32 on every CPU.

    Example:
        >>> resolve_precision("fp32", torch.device("cuda")), resolve_precision("auto", torch.device("cuda"))
        ('fp32', 'bf16')
    """
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_computes_bf16()) else "fp32"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds python, numpy and torch; with ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the states ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
