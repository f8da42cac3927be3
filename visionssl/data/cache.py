"""An on-disk cache of decoded datasets: images as a memory-mapped .npy, labels as JSON."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from visionssl.files import atomic_write, visionssl_home  # noqa: F401  (visionssl_home: re-exported)


def cached_arrays(
    key: str, build: Callable[[], tuple[np.ndarray, dict[str, Any]]], cache_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Returns ``build()``'s (uint8 images, JSON-able metadata), computed once and memory-mapped after.

    ``key`` must change whenever the content would (source, resolution, version). Both files are
    written to temporary names and renamed, so an interrupted build leaves no half-written cache.
    Set ``VISIONSSL_NO_CACHE=1`` (or ``cache_dir=""``) to skip the cache.
    """
    if cache_dir == "" or os.environ.get("VISIONSSL_NO_CACHE") == "1":
        return build()
    folder = Path(cache_dir) if cache_dir is not None else visionssl_home() / "data"
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    if npy.is_file() and meta.is_file():
        try:
            return np.load(npy, mmap_mode="c"), json.loads(meta.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    images, info = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(folder, key)
        atomic_write(npy, lambda f: np.save(f, images))
        atomic_write(meta, json.dumps(info))
    except OSError as exc:  # a read-only or full disk, VISIONSSL_HOME naming a file: warn and go on uncached
        import warnings

        try:
            if not meta.is_file():
                npy.unlink(missing_ok=True)  # never leave images without their metadata
        except OSError:
            pass  # the folder is not even a directory: nothing was written
        reason = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc  # atomic_write's error names the file
        warnings.warn(
            f"could not write the dataset cache {npy}: {reason.strerror or reason}; going on without it", stacklevel=2
        )
    return images, info


STALE_AFTER_S = 3600  # a temporary file this old was left by a killed process, not one still writing


def _remove_stale_temp_files(folder: Path, key: str) -> None:
    for tmp in folder.glob(f".{key}.*"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_AFTER_S:
                tmp.unlink()
        except OSError:
            pass
