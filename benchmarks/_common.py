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
