"""Nearest-neighbour search for kNN evaluation: FAISS flat, IVF or sharded over a memory-mapped bank,
on the GPU when FAISS sees one, with a chunked torch fallback. Rows are L2-normalised, so scores are cosines.

Example:
    >>> import numpy as np
    >>> bank = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> scores, idx = knn_search(bank, np.array([[0.9, 0.1]], dtype=np.float32), k=1)
    >>> idx.tolist()
    [[0]]
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import faiss
import numpy as np
import torch

from visionssl.errors import ConfigError, DataError

Array = Union[torch.Tensor, np.ndarray]  # noqa: UP007  (a runtime alias: `|` fails on Python 3.10)
Bank = Union[torch.Tensor, np.ndarray, str, os.PathLike]  # noqa: UP007
INDEXES = ("flat", "ivf", "sharded")
DEVICES = ("auto", "cpu", "cuda")


def knn_search(
    bank: Bank,
    queries: Array,
    k: int,
    *,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    shard_size: int = 262_144,
    device: str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities (Q, k) float32 and bank row indices (Q, k) int64 of each query's ``k`` nearest
    bank rows, most similar first. Arguments as in ``knn``; ``seed`` picks the IVF training sample.

    Example:
        >>> import numpy as np
        >>> sims, ids = knn_search(np.eye(3, dtype="float32"), np.array([[2.0, 1.0, 0.0]]), k=2)
        >>> ids.tolist(), [[round(float(s), 3) for s in row] for row in sims]
        ([[0, 1]], [[0.894, 0.447]])
    """
    if index not in INDEXES:
        raise ConfigError(f"unknown index {index!r}; valid: {', '.join(INDEXES)}")
    bank, queries = feature_rows(bank, "train_x"), feature_rows(queries, "test_x")
    if bank.shape[1] != queries.shape[1]:
        raise DataError(f"feature dimensions differ: train_x has {bank.shape[1]}, test_x has {queries.shape[1]}")
    if not 1 <= k <= len(bank):
        raise ConfigError(f"k must be between 1 and the bank size ({len(bank)} training features), got {k}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    use = search_backend(device)
    queries = normalized_rows(queries, "test_x")
    if index == "ivf":
        return _ivf_search(bank, queries, k, nlist, nprobe, shard_size, use == "faiss-gpu", seed)
    if index == "sharded":
        return _sharded_search(bank, queries, k, shard_size)
    if use == "torch-cuda":
        return _torch_search(normalized_rows(bank, "train_x"), queries, k)
    flat = faiss.IndexFlatIP(bank.shape[1])
    if use == "faiss-gpu":
        flat = faiss.index_cpu_to_gpu(_gpu_resources(), 0, flat)
    flat.add(normalized_rows(bank, "train_x"))
    return flat.search(queries, k)


def _ivf_search(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    nlist: int | None,
    nprobe: int | None,
    shard_size: int,
    gpu: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    n, dim = bank.shape
    max_cells = max(1, n // 39)  # faiss wants >= 39 training points per k-means centroid
    nlist = nlist if nlist is not None else min(max_cells, max(1, round(math.sqrt(n))))
    if not 1 <= nlist <= n:
        raise ConfigError(f"nlist must be between 1 and the bank size ({n}), got {nlist}")
    nprobe = nprobe if nprobe is not None else max(1, nlist // 8)
    if not 1 <= nprobe <= nlist:
        raise ConfigError(f"nprobe must be between 1 and nlist ({nlist}), got {nprobe}")
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = 64
    if gpu:
        ivf = faiss.index_cpu_to_gpu(_gpu_resources(), 0, ivf)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False))
    fresh = isinstance(bank, _NpyRows)  # its rows come as new arrays: normalise them in place
    ivf.train(normalized_rows(bank[sample], "train_x", copy=not fresh))
    for start in range(0, n, shard_size):
        ivf.add(normalized_rows(bank[start : start + shard_size], "train_x", row_offset=start, copy=not fresh))
    ivf.nprobe = nprobe
    return ivf.search(queries, k)


def _sharded_search(bank: np.ndarray, queries: np.ndarray, k: int, shard_size: int) -> tuple[np.ndarray, np.ndarray]:
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(bank), shard_size):
        shard = normalized_rows(
            bank[start : start + shard_size], "train_x", row_offset=start, copy=not isinstance(bank, _NpyRows)
        )
        sims, ids = faiss.knn(queries, shard, min(k, len(shard)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(sims, ids + start)
    heap.finalize()
    return heap.D, heap.I


def _torch_search(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    bank_t = torch.from_numpy(bank).cuda()
    chunk = max(1, 2**28 // len(bank))  # about 1 GiB of similarities at a time
    sims, ids = [], []
    for start in range(0, len(queries), chunk):
        s, i = (torch.from_numpy(queries[start : start + chunk]).cuda() @ bank_t.T).topk(k, dim=1)
        sims.append(s.cpu())
        ids.append(i.cpu())
    return torch.cat(sims).numpy(), torch.cat(ids).numpy()


def search_backend(device: str) -> str:
    """The backend ``knn_search`` uses for ``device``: ``faiss-cpu``, ``faiss-gpu`` or ``torch-cuda``.

    Example:
        >>> search_backend("cpu")
        'faiss-cpu'
    """
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if device == "cpu":
        return "faiss-cpu"
    if faiss_gpu:
        return "faiss-gpu"
    if torch.cuda.is_available():
        return "torch-cuda"
    if device == "cuda":
        raise ConfigError("device='cuda' but neither faiss nor torch sees a GPU; use device='cpu' or 'auto'")
    return "faiss-cpu"


_GPU_RESOURCES = None


def _gpu_resources():
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


class _NpyRows:
    """The rows of a ``.npy`` file, read on demand: each read maps the file, copies the rows and unmaps it,
    so a bank larger than memory is never resident."""

    def __init__(self, path: str | os.PathLike, name: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{name} file {self.path} does not exist")
        try:
            rows = np.load(self.path, mmap_mode="r")
        except ValueError as exc:
            raise DataError(f"{name} file {self.path} is not a .npy array: {exc}") from None
        self.shape, self.ndim = rows.shape, rows.ndim
        if rows.dtype.kind != "f":
            raise DataError(f"{name} file {self.path} holds {rows.dtype}; features must be floating point")
        del rows

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        mapped = np.load(self.path, mmap_mode="r")
        return np.array(mapped[rows], dtype=np.float32, order="C")  # mapping released with `mapped`


def feature_rows(x: Bank, name: str) -> np.ndarray | _NpyRows:
    if isinstance(x, (str, os.PathLike)):
        x = _NpyRows(x, name)
    if isinstance(x, _NpyRows):
        if x.ndim != 2 or len(x) == 0:
            raise DataError(f"{name} must be a non-empty (N, D) feature matrix, got shape {tuple(x.shape)}")
        return x
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{name} must be a non-empty (N, D) feature matrix, got shape {tuple(x.shape)}")
    return x


def normalized_rows(x: np.ndarray | _NpyRows, name: str, row_offset: int = 0, copy: bool = True) -> np.ndarray:
    """Float32, C-contiguous, L2-normalised rows (a copy unless ``copy=False``); NaN or infinite rows are refused."""
    if isinstance(x, _NpyRows):
        x, copy = x[:], False
    out = np.array(x, dtype=np.float32, order="C", copy=copy or None)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ConfigError(
            f"{name} has {len(bad)} rows with NaN or infinite values (first: row {row_offset + int(bad[0])}); "
            "features must be finite"
        )
    faiss.normalize_L2(out)
    return out
