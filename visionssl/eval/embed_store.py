"""The on-disk format of ``visionssl embed``: ``FILE.npy`` (float32 N x D), ``FILE.files.txt`` (one image path per
row, relative to the folder) and ``FILE.json`` (the model's sha256, the preprocessing, the counts, the skipped files).

While a run is under way its rows live in ``FILE.chunks/`` (one ``.npz`` per chunk of images, each written
atomically), so an interrupted run picks up after its last whole chunk; the chunks are joined into
``FILE.npy`` at the end and removed once that file and its sidecar are written.

Example:
    >>> import tempfile, numpy as np
    >>> out = Path(tempfile.mkdtemp()) / "emb.npy"
    >>> store = EmbeddingStore(out)
    >>> store.sidecar.name, store.files.name, store.chunks.name
    ('emb.json', 'emb.files.txt', 'emb.chunks')
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionssl.errors import ConfigError, DataError
from visionssl.files import atomic_write

FORMAT = "visionssl-embeddings"
FORMAT_VERSION = 1

__all__ = ["FORMAT", "EmbeddingStore", "listing_sha256", "load_embeddings"]


def listing_sha256(files: Sequence[str]) -> str:
    """sha256 of a list of relative paths (a chunk's inputs, or the whole folder's listing).

    Example:
        >>> listing_sha256(["a.png", "b.png"]) == listing_sha256(["a.png", "b.png"]) != listing_sha256(["a.png"])
        True
    """
    return hashlib.sha256("\n".join(files).encode("utf-8", "surrogateescape")).hexdigest()


class EmbeddingStore:
    """The files of one embeddings output ``FILE.npy``: its sidecar, its file list and its chunks."""

    def __init__(self, out: str | os.PathLike):
        self.npy = Path(out)
        if self.npy.suffix != ".npy":
            hint = (
                " (Parquet needs pyarrow, which visionssl does not depend on)" if self.npy.suffix == ".parquet" else ""
            )
            raise ConfigError(f"--out {out}: the embeddings file must end in .npy{hint}")
        stem = self.npy.with_suffix("")
        self.sidecar = stem.with_name(stem.name + ".json")
        self.files = stem.with_name(stem.name + ".files.txt")
        self.chunks = stem.with_name(stem.name + ".chunks")

    def read_sidecar(self) -> dict[str, Any] | None:
        """The sidecar's content, None when there is none; ``DataError`` for one that is not ours."""
        if not self.sidecar.is_file():
            return None
        try:
            meta = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"cannot read {self.sidecar}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f'{self.sidecar} is not a visionssl embeddings sidecar (no "format": "{FORMAT}")')
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.sidecar} has format version {meta.get('format_version')!r}; this visionssl reads {FORMAT_VERSION}"
            )
        return meta

    def write_sidecar(self, meta: dict[str, Any]) -> None:
        atomic_write(self.sidecar, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, indent=2))

    def chunk_path(self, index: int) -> Path:
        return self.chunks / f"{index:06d}.npz"

    def write_chunk(
        self, index: int, inputs_sha256: str, features: np.ndarray, ok: Sequence[int], skipped: Sequence[str]
    ) -> None:
        """One chunk, atomically: its rows, which of its inputs they are (``ok``) and why the others were skipped."""

        def write(f) -> None:
            np.savez(
                f,
                features=np.ascontiguousarray(features, dtype=np.float32),
                ok=np.asarray(ok, dtype=np.int64),
                skipped=np.asarray(list(skipped), dtype=np.str_),
                inputs=np.asarray(inputs_sha256, dtype=np.str_),
            )

        atomic_write(self.chunk_path(index), write)

    def read_chunk(self, index: int, inputs_sha256: str) -> dict[str, np.ndarray] | None:
        """The chunk ``index`` if it was written for exactly these inputs; None to compute it (again)."""
        path = self.chunk_path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                chunk = {k: z[k] for k in ("features", "ok", "skipped", "inputs")}
        except Exception as exc:  # a damaged chunk costs its recomputation, nothing else
            warnings.warn(f"recomputing unreadable chunk {path}: {type(exc).__name__}: {exc}", stacklevel=2)
            return None
        if str(chunk["inputs"]) != inputs_sha256:
            return None
        return chunk

    def assemble(self, chunks: int, dim: int, files: Sequence[str]) -> None:
        """Joins chunks ``0..chunks-1`` (rows of width ``dim``) into ``FILE.npy``, one chunk in memory at a time,
        and writes ``FILE.files.txt`` (both atomically)."""

        def write(f) -> None:
            header = {"descr": "<f4", "fortran_order": False, "shape": (len(files), dim)}
            np.lib.format.write_array_header_1_0(f, header)
            for index in range(chunks):
                with np.load(self.chunk_path(index), allow_pickle=False) as z:
                    rows = z["features"]
                if len(rows):
                    f.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())

        atomic_write(self.npy, write)
        atomic_write(self.files, "".join(f"{name}\n" for name in files).encode("utf-8", "surrogateescape"))

    def remove_chunks(self) -> None:
        if self.chunks.is_dir() and not self.chunks.is_symlink():
            shutil.rmtree(self.chunks)

    def leftovers(self) -> list[Path]:
        """Files of an output that has no sidecar (someone else's ``.npy``, or a sidecar deleted by hand)."""
        return [p for p in (self.npy, self.files, self.chunks) if p.exists() or p.is_symlink()]


def load_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """``(features memory-mapped (N, D) float32, files, sidecar)`` of a finished ``visionssl embed`` output.

    Raises ``DataError`` in one line for a missing or unfinished output, or one whose parts disagree.

    Example:
        >>> load_embeddings("missing.npy")
        Traceback (most recent call last):
        ...
        visionssl.errors.DataError: missing.npy: no embeddings sidecar missing.json beside it (write both with visionssl embed)
    """
    store = EmbeddingStore(path)
    meta = store.read_sidecar()
    if meta is None:
        raise DataError(f"{path}: no embeddings sidecar {store.sidecar} beside it (write both with visionssl embed)")
    if not meta.get("complete"):
        raise DataError(f"{path} is not finished (the embed run was interrupted); rerun visionssl embed to finish it")
    for part in (store.npy, store.files):
        if not part.is_file():
            raise DataError(f"{part} is missing; rerun visionssl embed to write it again")
    try:
        features = np.load(store.npy, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{store.npy} is not a .npy array: {exc}") from None
    text = store.files.read_bytes().decode("utf-8", "surrogateescape")
    files = text.split("\n")[:-1] if text else []
    if features.ndim != 2 or features.dtype != np.float32 or len(features) != len(files):
        raise DataError(
            f"{store.npy} holds {features.dtype} {tuple(features.shape)} for {len(files)} files in {store.files}; "
            "rerun visionssl embed to write them again"
        )
    return features, files, meta
