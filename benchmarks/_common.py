"""Shared helpers for the benchmark scripts: device description and results files."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device | str = "cpu") -> str:
    """GPU name, or the CPU model with the number of threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Wall-clock seconds of ``fn()``, synchronising CUDA before and after."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def fit_to_the_end(trainer: Any, resume: bool = False) -> dict[str, Any]:
    """``trainer.fit(resume=...)``'s result; a run stopped by SIGTERM or SIGINT ends the benchmark instead, since a
    partial run is no result (its checkpoint stays in the run directory)."""
    result = trainer.fit(resume=resume)
    if "stopped_by" in result:
        raise SystemExit(
            f"stopped by {result['stopped_by']} at epoch {trainer.epoch}: no row written (checkpoint in {trainer.out})"
        )
    return result


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Writes ``benchmarks/results/<name>.json`` with versions and a timestamp added; an absolute ``name`` is used as
    the path, and a name already ending in ``.json`` gets no second suffix."""
    import kornia
    import timm

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {
            "torch": torch.__version__,
            "kornia": kornia.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
        **payload,
    }
    path = RESULTS / (name if str(name).endswith(".json") else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_digits(split: str, image_size: int, seed: int = 0):
    """scikit-learn's handwritten digits (1,797 8x8 grayscale images, 10 classes) at ``image_size`` px, as a
    ``visionssl.data.ImageDataset`` with the label ``digit``: a second small labelled set of real images that
    no recipe was tuned on. Splits: ``train`` / ``test`` (75/25, stratified, seeded) and ``all``.

    Example:
        >>> ds = load_digits("test", 32)
        >>> len(ds), ds.num_classes, tuple(ds.images.shape[1:])
        (449, 10, (1, 32, 32))
    """
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    from visionssl.data import ImageDataset
    from visionssl.data.sources import stratified_split

    raw = sklearn_digits()
    pixels = torch.from_numpy(raw.images).float().div(16).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    pixels = torch.nn.functional.interpolate(pixels, size=image_size, mode="bilinear", align_corners=False)
    images = pixels.clamp(0, 1).mul(255).round().to(torch.uint8)
    labels = {"digit": torch.from_numpy(raw.target).long()}
    ds = ImageDataset(images, labels, "digit", {"digit": [str(d) for d in range(10)]}, "digits", "all")
    if split == "all":
        return ds
    if split not in ("train", "test"):
        raise ValueError(f"digits has no split {split!r}; valid: train, test, all")
    train, test = stratified_split(np.asarray(raw.target), seed=seed)
    out = ds.subset(torch.from_numpy(train if split == "train" else test))
    out.split = split
    return out
