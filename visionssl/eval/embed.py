"""Embeddings out: one vector per image of a folder (or of a dataset), and the nearest neighbours among them.

``embed`` decodes the images chunk by chunk (a folder larger than memory never is in memory), moves the uint8
batches to the device and resizes and normalises them there (the ``"eval"`` preset, as ``extract_features``
does), and runs the frozen backbone. With ``out`` it writes ``FILE.npy`` + ``FILE.files.txt`` + ``FILE.json``
(``visionssl.eval.embed_store``), one chunk file at a time, so a rerun after an interruption computes only the
chunks that are missing. ``neighbors`` finds the most similar rows (cosine) with the kNN evaluator's FAISS
search (``visionssl.eval.knn_search``).

Example:
    >>> import tempfile, numpy as np, visionssl as vs
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for i in range(4):
    ...     Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(root / f"{i}.png")
    >>> features, files = embed(vs.create_backbone("resnet10t_cifar"), root, image_size=16, progress=False)
    >>> features.shape, files
    ((4, 512), ['0.png', '1.png', '2.png', '3.png'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from torch import nn

from visionssl.backbones.features import batched_features, input_channels, resolve_device
from visionssl.data.dataset import ImageDataset, stored_size
from visionssl.data.decode import IMAGE_EXTENSIONS, BadImageError, decode_images, display_path
from visionssl.errors import ConfigError, DataError
from visionssl.eval.embed_store import EmbeddingStore, listing_sha256, load_embeddings

__all__ = ["Neighbor", "embed", "list_images", "load_embeddings", "neighbors"]

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], ImageDataset]  # noqa: UP007  (a runtime alias)


class Neighbor(NamedTuple):
    """One nearest neighbour: ``rank`` (1 = most similar), cosine ``similarity``, ``row`` and ``file``."""

    rank: int
    similarity: float
    row: int
    file: str


def list_images(root: str | os.PathLike) -> list[str]:
    """The image files anywhere under ``root``, as paths relative to it: folders and files sorted, hidden names
    and links to folders skipped. ``DataError`` for a missing folder, a folder without images, or a file name
    with a line break (the file list holds one name per line).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()); (root / "b").mkdir()
        >>> for name in ("b/2.png", "1.jpg", "notes.txt", ".hidden.png"):
        ...     (root / name).touch()
        >>> list_images(root)
        ['1.jpg', 'b/2.png']
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {display_path(root)} does not exist or is not a directory")
    found = []
    for dirpath, dirnames, names in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if "\n" in rel or "\r" in rel:
                raise DataError(f"image {display_path(rel)!r} in {display_path(root)}: a file name with a line break")
            found.append(rel)
    if not found:
        raise DataError(
            f"image folder {display_path(root)} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    return found


def embed(
    backbone: nn.Module,
    source: Source,
    *,
    out: str | os.PathLike | None = None,
    image_size: int | None = None,
    decode_size: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    layer: str | None = None,
    chunk_size: int = 1024,
    skip_bad_images: bool = False,
    model: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """One float32 vector per image of ``source``: ``(features (N, D), files)``, row ``i`` for ``files[i]``.

    Args:
        backbone: the frozen feature extractor (run in eval mode; its mode is restored).
        source: a folder (every image under it, ``list_images``; ``files`` are relative to it), a list of image
            paths (``files`` as given) or an ``ImageDataset`` (``files`` are the row numbers, ``"0"``, ``"1"``, ...).
        out: ``FILE.npy`` to write, with ``FILE.files.txt`` and the sidecar ``FILE.json``; a rerun reuses the
            chunks written for the same model, preprocessing and files, and refuses another model's output.
            The returned features are then memory-mapped from ``FILE.npy``.
        image_size: side of the square the backbone sees (default: 224 for files, the dataset's size).
        decode_size: side files are decoded to (shorter side, centre crop) before the device resize; default
            ``stored_size(image_size)``, as evaluation keeps them.
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        layer: ``None``/``"final"`` or a stage such as ``"stage3"`` (``visionssl.eval.layers``).
        chunk_size: images decoded (and, with ``out``, written) together.
        skip_bad_images: skip unreadable files (listed in the sidecar, not in ``files``) instead of raising
            ``BadImageError`` naming the file.
        model: what identifies the weights in the sidecar, at least ``{"sha256": ...}`` (``visionssl embed`` puts
            the checkpoint file's); default: ``{"sha256": weights_hash(backbone), "hash_of": "weights"}``.
        progress: show a progress bar.

    Example:
        >>> import visionssl as vs
        >>> ds = vs.data.load_dataset("synthetic:6", image_size=16)
        >>> features, files = embed(vs.create_backbone("resnet10t_cifar"), ds, chunk_size=4, progress=False)
        >>> features.shape, files[:3]
        ((6, 512), ['0', '1', '2'])
    """
    from tqdm.auto import tqdm

    from visionssl.augment import create as create_augmentation
    from visionssl.eval.features import weights_hash
    from visionssl.eval.layers import with_layer

    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}")
    device = resolve_device(device)
    net = with_layer(backbone, layer)  # a bad layer fails here, before anything is decoded
    files, keys, load, size, decoded = _source(source, image_size, decode_size, skip_bad_images)
    prep = _preprocessing(size, decoded, input_channels(backbone), layer, device)
    model = dict(model) if model else {"sha256": weights_hash(backbone), "hash_of": "weights"}
    store = EmbeddingStore(out) if out is not None else None
    header = {
        "model": model,
        "preprocessing": prep,
        "data": {"source": _describe(source), "listed": len(files), "listing_sha256": listing_sha256(keys)},
        "chunk_size": chunk_size,
        "visionssl": _version(),
    }
    if store is not None and _start(store, header, skip_bad_images):
        features, done, _ = load_embeddings(store.npy)
        return features, done

    view = create_augmentation("eval", image_size=size, channels=input_channels(backbone)).to(device)
    starts = list(range(0, len(files), chunk_size))
    results: list[dict[str, Any] | None] = [None] * len(starts)
    bar = tqdm(total=len(files), unit="img", desc="embed", disable=not progress)
    for ci, start in enumerate(starts):
        chunk = store.read_chunk(ci, listing_sha256(keys[start : start + chunk_size])) if store else None
        if chunk is not None and (skip_bad_images or not len(chunk["skipped"])):
            results[ci] = _summary(chunk, store is not None)
            bar.update(min(chunk_size, len(files) - start))
    todo = [ci for ci, r in enumerate(results) if r is None]
    was_training = backbone.training
    pool = ThreadPoolExecutor(1)
    # On a GPU the next chunk is decoded while the backbone runs on this one; on the CPU the backbone already
    # uses every core, and decoding beside it was measured 25% slower on 2 cores than one after the other.
    ahead = device.type != "cpu"
    pending = None
    try:
        for j, ci in enumerate(todo):
            images, ok, reasons = (pending or pool.submit(load, starts[ci], chunk_size)).result()
            pending = pool.submit(load, starts[todo[j + 1]], chunk_size) if ahead and j + 1 < len(todo) else None
            feats = np.zeros((0, 0), np.float32)
            if ok:
                run = batched_features(net, torch.as_tensor(images), lambda x: view(x)[0], batch_size, device)
                feats = run.numpy()
            chunk = {"features": feats, "ok": np.asarray(ok, np.int64), "skipped": np.asarray(reasons, np.str_)}
            if store is not None:
                store.write_chunk(ci, listing_sha256(keys[starts[ci] : starts[ci] + chunk_size]), feats, ok, reasons)
            results[ci] = _summary(chunk, store is not None)
            bar.update(min(chunk_size, len(files) - starts[ci]))
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True)
        backbone.train(was_training)
        bar.close()

    done, skipped = [], []
    for start, r in zip(starts, results):
        names = files[start : start + chunk_size]
        done += [names[i] for i in r["ok"]]
        bad = sorted(set(range(len(names))) - set(r["ok"].tolist()))
        skipped += [{"file": names[i], "reason": str(reason)} for i, reason in zip(bad, r["skipped"])]
    if not done:
        raise DataError(
            f"all {len(files)} images were skipped as unreadable (the first: {display_path(skipped[0]['file'])}: "
            f"{skipped[0]['reason']}); there is nothing to embed"
        )
    dim = max(r["dim"] for r in results)
    if store is None:
        return np.concatenate([r["features"] for r in results if len(r["features"])]), done
    store.assemble(len(starts), dim, done)
    counts = {"listed": len(files), "embedded": len(done), "skipped": len(skipped)}
    store.write_sidecar({**header, "complete": True, "dim": dim, "counts": counts, "skipped": skipped})
    store.remove_chunks()
    return np.load(store.npy, mmap_mode="r"), done


def neighbors(
    embeddings: str | os.PathLike,
    query: int | str | os.PathLike,
    k: int | None = None,
    *,
    backbone: nn.Module | None = None,
    device: str | torch.device | None = None,
    index: str = "flat",
) -> list[Neighbor]:
    """The ``k`` rows of ``embeddings`` (a ``visionssl embed`` output) most similar (cosine) to ``query``.

    ``query`` is a row index (its own row left out) or an image file, embedded by ``backbone`` with the
    preprocessing recorded in the sidecar (the caller gives the model that made the file; ``visionssl neighbors``
    resolves the recorded checkpoint and checks its sha256). ``k`` defaults to 10 (fewer when there are fewer rows). ``index``: ``"flat"``, ``"ivf"`` or ``"sharded"``
    (FAISS, as in ``knn``). Bad ``k``, a row that is not there or a missing sidecar raise a ``UserError``.

    Example:
        >>> import tempfile, numpy as np, visionssl as vs
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i, v in enumerate([0, 250, 5]):
        ...     Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(root / f"{i}.png")
        >>> net = vs.create_backbone("resnet10t_cifar")
        >>> _ = embed(net, root, out=root / "emb.npy", image_size=16, progress=False)
        >>> [n.file for n in neighbors(root / "emb.npy", 0, k=2)]
        ['2.png', '1.png']
    """
    from visionssl.eval.knn_search import knn_search

    features, files, meta = load_embeddings(embeddings)
    n = len(files)
    is_row = isinstance(query, (int, np.integer)) and not isinstance(query, bool)
    if is_row and not 0 <= query < n:
        raise ConfigError(f"query row {query} is not a row of {embeddings}: valid rows are 0 to {n - 1}")
    most = n - 1 if is_row else n
    k = min(10, most) if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= most:
        what = "the other rows" if is_row else "the rows"
        raise ConfigError(f"k must be between 1 and {most} ({what} of {embeddings}), got {k!r}")
    if is_row:
        q = np.array(features[query : query + 1], dtype=np.float32)
    else:
        if backbone is None:
            raise ConfigError(f"an image query needs the backbone that made {embeddings} (backbone=...)")
        if not Path(query).is_file():
            raise DataError(f"query {display_path(query)} is neither a row number of {embeddings} nor an image file")
        prep = meta["preprocessing"]
        layer = None if prep["layer"] == "final" else prep["layer"]
        try:
            q, _ = embed(
                backbone, [query], image_size=prep["image_size"], decode_size=prep["decode_size"], device=device,
                layer=layer, progress=False,
            )  # fmt: skip
        except BadImageError as exc:  # the same error, without the --skip-bad-images hint that fits a folder
            raise DataError(f"cannot read query image {display_path(query)}: {exc.reason}") from None
        if q.shape[1] != features.shape[1]:
            raise ConfigError(
                f"the backbone gives {q.shape[1]}-d features but {embeddings} holds {features.shape[1]}-d rows: "
                "not the model that made them"
            )
    sims, ids = knn_search(EmbeddingStore(embeddings).npy, q, k + is_row, index=index)
    hits = [(float(s), int(i)) for s, i in zip(sims[0], ids[0]) if not (is_row and i == query) and i >= 0][:k]
    return [Neighbor(rank, s, i, files[i]) for rank, (s, i) in enumerate(hits, 1)]


def _source(source: Source, image_size: int | None, decode_size: int | None, skip_bad: bool):
    """(files, keys identifying each input, load(start, count) -> (uint8 images, ok, reasons), size, decoded size)."""
    if isinstance(source, ImageDataset):
        size = int(image_size or source.image_size)
        files = [str(i) for i in range(len(source))]
        keys = [f"{source.fingerprint()}|{i}" for i in range(len(source))]

        def load(start: int, count: int):
            images = source.images[start : start + count]
            return images, list(range(len(images))), []

        return files, keys, load, size, source.image_size
    if isinstance(source, (str, os.PathLike)):
        root = Path(source).expanduser()
        files = list_images(root)
        paths = [root / f for f in files]
    else:
        files = [os.fspath(p) for p in source]
        paths = [Path(p).expanduser() for p in files]
        if not files:
            raise DataError("no image files to embed: the list is empty")
    size = int(image_size or 224)
    decoded = int(decode_size or stored_size(size))
    keys = [f"{f}|{_stat_key(p)}" for f, p in zip(files, paths)]  # a changed file is embedded again

    def load(start: int, count: int):
        images, ok, skipped = decode_images(paths[start : start + count], decoded, channels=3, skip_bad=skip_bad)
        return images, ok, [reason for _, reason in skipped]

    return files, keys, load, size, decoded


def _stat_key(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:  # gone or a broken link: decoding reports it
        return "-1|-1"
    return f"{st.st_size}|{st.st_mtime_ns}"


def _preprocessing(size: int, decoded: int, channels: int, layer: str | None, device: torch.device) -> dict:
    from visionssl.augment import IMAGENET_MEAN, IMAGENET_STD

    return {
        "decode_size": decoded,
        "decode": f"shorter side resized to {decoded} px (bilinear), centre crop {decoded}x{decoded}",
        "image_size": size,
        "resize": f"antialiased bilinear to {size}x{size} on the device",
        "channels": channels,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "layer": layer or "final",
        "precision": "bf16" if device.type == "cuda" else "float32",
    }


def _start(store: EmbeddingStore, header: dict, skip_bad: bool) -> bool:
    """Checks an existing output against this run (another model or preprocessing is refused) and marks it
    unfinished; True when it is already finished for the same files."""
    meta = store.read_sidecar()
    if meta is None:
        left = store.leftovers()
        if left:
            raise DataError(
                f"{left[0]} exists but {store.sidecar} does not (not visionssl embeddings, or the sidecar was "
                "deleted); choose another --out or remove it"
            )
    else:
        old, new = (meta.get("model") or {}).get("sha256") or "", header["model"]["sha256"]
        if old != new:
            raise DataError(
                f"{store.npy} holds embeddings of another model (sha256 {old[:12]}, this one {new[:12]}); "
                f"use another --out, or delete {store.npy} and the files beside it to start over"
            )
        was, now = meta.get("preprocessing") or {}, header["preprocessing"]
        changed = [key for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
        if changed:
            diff = ", ".join(f"{key} {was.get(key)!r} -> {now.get(key)!r}" for key in changed)
            raise DataError(
                f"{store.npy} was made with other preprocessing ({diff}); use another --out, or the same settings"
            )
        same = meta.get("data", {}).get("listing_sha256") == header["data"]["listing_sha256"]
        if meta.get("complete") and same and (skip_bad or not meta.get("skipped")):
            if store.npy.is_file() and store.files.is_file():
                return True
    store.write_sidecar({**header, "complete": False})
    return False


def _summary(chunk: dict[str, np.ndarray], on_disk: bool) -> dict[str, Any]:
    feats = chunk["features"]
    out = {"ok": chunk["ok"], "skipped": chunk["skipped"], "dim": feats.shape[1] if len(feats) else 0}
    out["features"] = None if on_disk else feats  # written rows are read back from their chunk at the end
    return out


def _describe(source: Source) -> str:
    if isinstance(source, ImageDataset):
        return f"dataset {source.name} ({source.split})"
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).expanduser().resolve())
    return f"{len(source)} files"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionssl")
    except PackageNotFoundError:
        return "unknown"
