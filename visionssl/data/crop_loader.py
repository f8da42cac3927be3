"""Streaming image folders: training on datasets that do not fit in memory (ImageNet-scale folders).

CPU workers (a torch ``DataLoader``) read each file, decode it and cut every view's random resized crop
straight to the training size: uint8 out, no float work on the CPU. A JPEG is decoded at a reduced
scale (libjpeg's DCT scaling) whenever all of its crops stay at least as large as the output. Flip,
colour, blur, solarisation and normalisation run batched on the device, from the same presets as the
in-memory path: ``visionssl.augment.preset_split.split_preset`` moves each view's crop to the workers and keeps
the rest, and ``visionssl.engine.stream_loader.stream_loader`` pairs the two halves.

With ``gpu_decode`` the workers only read the bytes and draw the crop boxes (from the file header);
nvJPEG decodes the batch on the GPU (``visionssl.data.decode.decode_jpegs``, torchcodec's decoder) and the
crops are resized there. Files that are not JPEGs are still decoded by the workers.

From the command line: ``visionssl pretrain --method simclr data.name=/data/imagenet data.stream=true
augment.image_size=224 data.workers=16`` (``data.gpu_decode=true`` for nvJPEG).

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for c in ("cat", "dog"):
    ...     (Path(root) / c).mkdir()
    ...     Image.new("RGB", (48, 40)).save(f"{root}/{c}/0.jpg")
    >>> loader = StreamLoader(list_image_files(root, split="all"), [CropSpec(16)], batch_size=2, num_workers=0)
    >>> indices, crops = next(iter(loader.epoch(0)))
    >>> crops.shape, crops.dtype
    (torch.Size([2, 1, 3, 16, 16]), torch.uint8)
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from visionssl.data.decode import BadImageError, check_image_size, decode_jpegs, display_path, open_image, to_8bit
from visionssl.data.folders import list_image_folder
from visionssl.data.loader import BatchLoader, prefetch_to_device
from visionssl.data.sources import stratified_split
from visionssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


# ------------------------------------------------------------------------------------------ file lists
@dataclass
class ImageFiles:
    """The image files of a folder and their labels, listed but not decoded (the streaming ``train_set``).

    Attributes mirror ``ImageDataset``: ``paths``, ``labels``, ``label``, ``classes``, ``name``, ``split``,
    ``skipped`` (files found unreadable while streaming), ``targets``, ``len()``.
    """

    paths: list[Path]
    labels: dict[str, torch.Tensor]
    label: str | None
    classes: dict[str, list[str]]
    name: str
    split: str = "all"
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def targets(self) -> torch.Tensor | None:
        return self.labels[self.label] if self.label is not None else None

    @property
    def images(self) -> torch.Tensor:
        raise AttributeError(
            f"{self.name} is streamed from its files (data.stream=true): its images are never all in memory. "
            "This needs the in-memory path (data.stream=false)."
        )


def list_image_files(spec: str, split: str = "train") -> ImageFiles:
    """Lists a folder in torchvision's ImageFolder layout (``ROOT/<class>/<image>``) without decoding it.

    ``spec`` is a directory or ``imagefolder:PATH``. The split follows ``load_dataset``'s rules: with
    ``train/`` and ``test/`` (or ``val/``) sub-folders ``split`` picks one, otherwise a seeded, stratified
    75/25 split of the listed files. Files are listed in a sorted, reproducible order.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp(); (Path(root) / "a").mkdir()
        >>> for i in range(4):
        ...     Image.new("L", (8, 8)).save(f"{root}/a/{i}.png")
        >>> files = list_image_files(root, split="all")
        >>> len(files), files.classes, [p.name for p in files.paths]
        (4, {'class': ['a']}, ['0.png', '1.png', '2.png', '3.png'])
    """
    if split not in ("train", "test", "all"):
        raise ConfigError(f"unknown split {split!r}; valid: train, test, all")
    name, _, arg = spec.partition(":")
    root = Path(arg if name == "imagefolder" else spec).expanduser()
    if not root.is_dir():
        raise DataError(
            "data.stream needs an image folder (a directory or 'imagefolder:PATH'); "
            f"{display_path(root)} is not a directory"
        )
    _, presplit, paths, targets, class_names = list_image_folder(root, split)
    y = torch.tensor(targets, dtype=torch.long)
    if not presplit and split != "all":
        keep = stratified_split(y.numpy())[0 if split == "train" else 1]
        paths, y = [paths[i] for i in keep], y[torch.from_numpy(keep)]
    return ImageFiles(paths, {"class": y}, "class", {"class": class_names}, f"imagefolder:{root}", split)


# --------------------------------------------------------------------------- crops on the CPU workers
class CropSpec(NamedTuple):
    """One view's random resized crop: output side, area fraction range, aspect-ratio range."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def random_crop_box(
    width: int, height: int, spec: CropSpec, rng: np.random.Generator, tries: int = 10
) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) in pixels, drawn as ``RandomResizedCropFlip`` draws on the device: the first of
    ``tries`` (area, log-aspect) draws that fits in the image, else the whole image.

    Example:
        >>> x0, y0, w, h = random_crop_box(100, 50, CropSpec(16, (0.5, 0.5), (1.0, 1.0)), np.random.default_rng(0))
        >>> round(w * h), x0 + w <= 100 and y0 + h <= 50
        (2500, True)
    """
    area = width * height
    log_low, log_high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(*spec.scale)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h
    return 0.0, 0.0, float(width), float(height)


def crop_boxes(width: int, height: int, specs: Sequence[CropSpec], rng: np.random.Generator) -> np.ndarray:
    """(V, 4) boxes, one per view."""
    return np.array([random_crop_box(width, height, s, rng) for s in specs], dtype=np.float64)


def read_crops(
    path: str | os.PathLike, specs: Sequence[CropSpec], channels: int, rng: np.random.Generator
) -> np.ndarray:
    """Decodes one file and returns its crops, uint8 (V, channels, S, S); ``BadImageError`` names a bad file.

    The crop is resized with PIL's antialiased bilinear filter. A JPEG is decoded at 1/2, 1/4 or 1/8
    scale (in the DCT, nearly free) when every crop keeps at least its output size in pixels.
    """
    path = Path(path)
    try:
        with open_image(path) as img:
            width, height = img.size
            check_image_size(path, width, height)  # the crops' output is bounded; the decoded image is not
            # EXIF orientation 5-8 turns the picture by 90 degrees: the boxes are drawn on the upright image
            upright = (height, width) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)
            boxes = crop_boxes(*upright, specs, rng)
            if img.format == "JPEG":
                shrink = min(min(w, h) / s.size for (_, _, w, h), s in zip(boxes, specs))
                if shrink >= 2:
                    img.draft("L" if channels == 1 else "RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
            img.load()
            img = to_8bit(ImageOps.exif_transpose(img), channels)
            sx, sy = img.width / upright[0], img.height / upright[1]
            out = np.empty((len(specs), channels, specs[0].size, specs[0].size), dtype=np.uint8)
            for v, ((x0, y0, w, h), spec) in enumerate(zip(boxes, specs)):
                box = (x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy)
                crop = np.asarray(img.resize((spec.size, spec.size), Image.BILINEAR, box=box), dtype=np.uint8)
                out[v] = crop[None] if crop.ndim == 2 else crop.transpose(2, 0, 1)
            return out
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many kinds on broken files; any of them is this file's fault
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None


class _Item(NamedTuple):
    index: int
    crops: np.ndarray | None = None  # decoded on the worker
    data: torch.Tensor | None = None  # JPEG bytes, decoded on the device (gpu_decode)
    boxes: np.ndarray | None = None  # their crop boxes
    error: str | None = None


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])  # crops depend on (seed, epoch, index), not on the worker


class _CropFiles(torch.utils.data.Dataset):
    """Item ``(epoch, index)``: the crops of file ``index``, drawn from a generator seeded by (seed, epoch, index)."""

    def __init__(self, paths: Sequence[Path], specs: Sequence[CropSpec], channels: int, seed: int, gpu_decode: bool):
        self.paths, self.specs, self.channels, self.seed, self.gpu_decode = (
            list(paths),
            list(specs),
            channels,
            seed,
            gpu_decode,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> _Item:
        epoch, index = key
        path, rng = self.paths[index], _rng(self.seed, epoch, index)
        try:
            if self.gpu_decode:
                with open(path, "rb") as f:
                    data = f.read()
                if data[:3] == JPEG_MAGIC:
                    with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:  # the header: the boxes' size
                        check_image_size(path, img.width, img.height)  # before nvJPEG allocates the image
                        upright = img.getexif().get(0x0112, 1) == 1  # nvJPEG ignores EXIF: turned ones go to PIL
                        boxes = crop_boxes(img.width, img.height, self.specs, rng) if upright else None
                    if upright:
                        return _Item(index, data=torch.frombuffer(bytearray(data), dtype=torch.uint8), boxes=boxes)
            return _Item(index, crops=read_crops(path, self.specs, self.channels, rng))
        except BadImageError as exc:
            return _Item(index, error=exc.reason)
        except OSError as exc:
            return _Item(index, error=f"{type(exc).__name__}: {exc}")


def _collate(items: list[_Item]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, _Item]], list[tuple[int, _Item]]]:
    """-> (indices, crops decoded on the workers (B, V, C, S, S), [(row, JPEG item)], [(row, bad item)])."""
    indices = torch.tensor([it.index for it in items], dtype=torch.long)
    jpegs = [(r, it) for r, it in enumerate(items) if it.data is not None]
    errors = [(r, it) for r, it in enumerate(items) if it.error is not None]
    decoded = [(r, it.crops) for r, it in enumerate(items) if it.crops is not None]
    if not decoded:
        return indices, torch.empty(0, dtype=torch.uint8), jpegs, errors
    crops = torch.zeros((len(items), *decoded[0][1].shape), dtype=torch.uint8)
    for r, c in decoded:
        crops[r] = torch.from_numpy(c)
    return indices, crops, jpegs, errors


class _EpochBatches:
    """The batch sampler: the current epoch's batches as (epoch, index) keys (set before each epoch)."""

    def __init__(self) -> None:
        self.epoch, self.batches = 0, []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter([[(self.epoch, int(i)) for i in b] for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


# ------------------------------------------------------------------------------------------ the loader
class StreamLoader(BatchLoader):
    """Seeded, resumable batches of ``(indices, uint8 crops (B, V, C, S, S) on the device)`` from image files.

    The order of an epoch is ``BatchLoader``'s (it depends only on ``seed`` and ``epoch``); each image's
    crops depend only on ``(seed, epoch, index)``, so the batches do not depend on the number of workers
    and a resumed run sees the same ones. Batches are prefetched by the workers and copied to the device
    one batch ahead (pinned, on a side CUDA stream).

    Args:
        files: from ``list_image_files``.
        crops: one ``CropSpec`` (or ``(size, scale, ratio)``) per view (``split_preset`` takes them from a preset).
        batch_size, device, seed, shuffle, drop_last, rank, world_size: as ``BatchLoader``.
        num_workers: decoding processes (default: every core; 0 decodes in this process).
        channels: 3 (RGB) or 1 (grayscale) crops.
        gpu_decode: decode JPEGs on the GPU with nvJPEG (CUDA devices only).
        skip_bad_images: an unreadable file's slot is filled with another image of its batch (every batch
            keeps its size) and the file is listed in ``files.skipped``; otherwise ``BadImageError`` names it.
    """

    def __init__(
        self,
        files: ImageFiles,
        crops: Sequence[CropSpec],
        batch_size: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        num_workers: int | None = None,
        channels: int = 3,
        gpu_decode: bool = False,
        skip_bad_images: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(
            files, batch_size, device, seed=seed, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world_size
        )
        crops = [CropSpec(*c) for c in crops]  # split_preset hands plain (size, scale, ratio) tuples
        if not crops or len({c.size for c in crops}) != 1:
            raise ConfigError(f"crops must be one CropSpec per view, all of one size; got {list(crops)}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        if gpu_decode and self.device.type not in ("cuda", "cpu"):
            raise ConfigError(f"data.gpu_decode needs a CUDA device, got {self.device}")
        if gpu_decode and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("data.gpu_decode=true but no CUDA GPU is available")
        # gpu_decode on a CPU device decodes with torchvision in this process (the same code path, for tests)
        self.files, self.crops, self.channels = files, list(crops), channels
        self.gpu_decode, self.skip_bad_images = gpu_decode, skip_bad_images
        self.num_workers = len(os.sched_getaffinity(0)) if num_workers is None else num_workers
        self._sampler = _EpochBatches()
        self._loader: torch.utils.data.DataLoader | None = None

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch``: (indices, uint8 crops (B, V, C, S, S) on the device)."""
        self._sampler.epoch, self._sampler.batches = epoch, self.batches(epoch, start)
        if self._loader is None:
            workers = self.num_workers
            self._loader = torch.utils.data.DataLoader(
                _CropFiles(self.files.paths, self.crops, self.channels, self.seed, self.gpu_decode),
                batch_sampler=self._sampler,
                num_workers=workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )
        if not self.gpu_decode:
            host = (
                (indices, self._fill_bad_rows(indices, crops, errors)) for indices, crops, _, errors in self._loader
            )
            yield from prefetch_to_device(host, self.device)
            return
        for indices, crops, jpegs, errors in self._loader:
            yield indices, self._fill_bad_rows(indices, self._decode_on_device(indices, crops, jpegs, errors), errors)

    def _crop_shape(self) -> tuple[int, int, int, int]:
        size = self.crops[0].size
        return len(self.crops), self.channels, size, size

    def _fill_bad_rows(
        self, indices: torch.Tensor, crops: torch.Tensor, errors: list[tuple[int, _Item]]
    ) -> torch.Tensor:
        """Raises ``BadImageError`` for the first bad file, or (skip_bad_images) refills its row with a good one."""
        if not errors:
            return crops
        rows = [r for r, _ in errors]
        for _, it in errors:
            path = str(self.files.paths[it.index])
            if not self.skip_bad_images:
                raise BadImageError(path, it.error or "unreadable")
            self.files.skipped.append((path, it.error or "unreadable"))
            logger.warning("skipped unreadable image %s (%s)", display_path(path), it.error)
        good = [r for r in range(len(indices)) if r not in set(rows)]
        if not good:
            raise BadImageError(
                self.files.paths[errors[0][1].index], f"every image of its batch is unreadable ({errors[0][1].error})"
            )
        for k, r in enumerate(rows):
            substitute = good[k % len(good)]
            crops[r] = crops[substitute]
            indices[r] = indices[substitute]
        return crops

    def _decode_on_device(
        self,
        indices: torch.Tensor,
        crops: torch.Tensor,
        jpegs: list[tuple[int, _Item]],
        errors: list[tuple[int, _Item]],
    ) -> torch.Tensor:
        """nvJPEG-decodes the batch's JPEGs on the device and resizes their crops there."""
        from torchvision.transforms.v2.functional import resized_crop

        out = torch.zeros((len(indices), *self._crop_shape()), dtype=torch.uint8, device=self.device)
        if crops.numel():
            out.copy_(crops, non_blocking=True)
        if not jpegs:
            return out
        device = self.device if self.device.type == "cuda" else "cpu"
        images = decode_jpegs([it.data for _, it in jpegs], self.channels, device)
        for (row, it), image in zip(jpegs, images):
            if image is None:  # nvJPEG refuses some JPEGs (e.g. CMYK): PIL on the CPU, same crop boxes
                path = self.files.paths[it.index]
                try:
                    epoch = self._sampler.epoch
                    out[row] = torch.from_numpy(
                        read_crops(path, self.crops, self.channels, _rng(self.seed, epoch, it.index))
                    ).to(self.device)
                except BadImageError as exc:
                    errors.append((row, it._replace(error=exc.reason)))
                continue
            for v, ((x0, y0, w, h), spec) in enumerate(zip(it.boxes, self.crops)):
                top, left = int(round(y0)), int(round(x0))
                height, width = (
                    max(1, min(int(round(h)), image.shape[1] - top)),
                    max(1, min(int(round(w)), image.shape[2] - left)),
                )
                out[row, v] = resized_crop(image, top, left, height, width, [spec.size, spec.size], antialias=True)
        return out
