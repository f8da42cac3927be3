"""Decoding image files into uint8 arrays, with a clear error naming any file that cannot be read."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from visionssl.errors import DataError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)  # .gif: first frame
# The formats of IMAGE_EXTENSIONS (PPM covers .pgm). A file is opened as one of these only: content of
# another kind under an image's name (EPS, which Pillow renders by running Ghostscript) is refused.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
MAX_PIXELS = 100_000_000  # larger images, or resizes to more pixels, are refused as decompression bombs
MAX_ASPECT_RATIO = 100  # a 3,000,000 x 1 PNG of 3 kB would resize to billions of pixels


class BadImageError(DataError):
    """An image file that cannot be decoded; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(
            f"cannot read image {display_path(path)}: {reason} (pass --skip-bad-images to skip such files)"
        )


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printable text: a name that is not valid UTF-8 is shown as the repr of its bytes.

    Example:
        >>> display_path("a/b.png"), display_path(os.fsdecode(b"a/\\xff.png"))
        ('a/b.png', "b'a/\\\\xff.png'")
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # undecodable bytes in the file name (surrogate escapes)
        return repr(os.fsencode(text))


def decode_image(path: str | os.PathLike, size: int, channels: int = 3) -> np.ndarray:
    """Reads one file as uint8 (channels, size, size): shorter side resized to ``size``, centre crop.

    Any mode (palette, alpha, CMYK, 16-bit, float) becomes 8-bit RGB or grayscale.
    Raises ``BadImageError`` naming the file for anything that is not a readable image.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/a.png"; Image.new("RGB", (40, 20), "red").save(p)
        >>> decode_image(p, 16).shape
        (3, 16, 16)
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise BadImageError(path, _not_a_file_reason(path))
        # The sizes are checked on the header, before any pixel is decoded. (No warnings.catch_warnings
        # here: it is not thread-safe, and decode_images runs this in threads.)
        with open_image(path) as img:
            check_image_size(path, img.width, img.height, size)
            img.load()
            img = _resize_center_crop(to_8bit(ImageOps.exif_transpose(img), channels), size)
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many kinds on broken files; any of them is this file's fault
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Opens ``path`` lazily (the header only) as one of ``IMAGE_FORMATS``; ``BadImageError`` for anything else.

    Example:
        >>> import tempfile
        >>> p = tempfile.mkdtemp() + "/a.png"; Image.new("L", (3, 2)).save(p)
        >>> with open_image(p) as img:
        ...     img.format, img.size
        ('PNG', (3, 2))
        >>> Image.new("L", (3, 2)).save(p, "EPS")
        >>> open_image(p)
        Traceback (most recent call last):
        ...
        visionssl.data.decode.BadImageError: cannot read image ...: UnidentifiedImageError: not a PNG, JPEG, BMP, \
TIFF, WEBP, GIF or PPM image (pass --skip-bad-images to skip such files)
    """
    try:
        return Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        kinds = ", ".join(IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1]}"
        raise BadImageError(path, f"UnidentifiedImageError: not a {kinds} image") from None


def check_image_size(path: str | os.PathLike, width: int, height: int, size: int | None = None) -> None:
    """Refuses, from the header's size alone, an image whose decoding or resizing would take unbounded memory:
    more than ``MAX_PIXELS`` pixels, an aspect ratio above ``MAX_ASPECT_RATIO``:1, or (``size``: the shorter
    side it is resized to) a resized image of more than ``MAX_PIXELS`` pixels. Raises ``BadImageError``.

    Example:
        >>> check_image_size("ok.png", 640, 480, 224)
        >>> check_image_size("wide.png", 3_000_000, 1, 32)
        Traceback (most recent call last):
        ...
        visionssl.data.decode.BadImageError: cannot read image wide.png: 3000000x1 pixels: an aspect ratio of \
3000000:1, above the limit of 100:1 (a resize bomb?) (pass --skip-bad-images to skip such files)
    """
    if width < 1 or height < 1:
        raise BadImageError(path, f"{width}x{height} pixels: the image is empty")
    if width * height > MAX_PIXELS:
        raise BadImageError(path, f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS} (decompression bomb?)")
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT_RATIO * short:
        raise BadImageError(
            path,
            f"{width}x{height} pixels: an aspect ratio of {long}:{short}, above the limit of "
            f"{MAX_ASPECT_RATIO}:1 (a resize bomb?)",
        )
    if size is not None:
        w, h = _resized_size(width, height, size)
        if w * h > MAX_PIXELS:
            raise BadImageError(
                path,
                f"{width}x{height} pixels resized to a shorter side of {size} would be {w}x{h}, "
                f"above the limit of {MAX_PIXELS} pixels",
            )


def decode_images(
    paths: Sequence[str | os.PathLike], size: int, channels: int = 3, skip_bad: bool = False, workers: int | None = None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decodes many files in parallel threads (PIL releases the GIL while decoding).

    Returns ``(images (M, C, size, size) uint8, indices of the decoded paths, skipped (path, reason))``.
    Without ``skip_bad`` the first bad file raises ``BadImageError``.
    """
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    ok: list[int] = []
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, str | None]:
        try:
            out[i] = decode_image(paths[i], size, channels)
            return i, None
        except BadImageError as exc:
            if not skip_bad:
                raise
            return i, exc.reason

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        for i, reason in pool.map(work, range(len(paths))):
            if reason is None:
                ok.append(i)
            else:
                skipped.append((str(paths[i]), reason))
    return out[ok], ok, skipped


def decode_jpegs(data: list[torch.Tensor], channels: int, device: torch.device | str) -> list[torch.Tensor | None]:
    """JPEG bytes (1-d uint8 tensors on the CPU) -> uint8 (C, H, W) images on ``device``, decoded as one batch:
    nvJPEG on a CUDA device, libjpeg on the CPU.

    The decoder is torchcodec's ``decode_jpeg`` (CPU and CUDA, no FFmpeg needed: ``pip install
    visionssl[gpu]``); without a loadable torchcodec, torchvision's, whose image decoding is deprecated since
    torchvision 0.29 (its warning is silenced here, and only here). An image the decoder refuses (nvJPEG
    refuses e.g. CMYK JPEGs) is ``None``: the caller decodes that file with PIL.

    Example:
        >>> import io, torch
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (6, 4), (200, 30, 90)).save(buf, "JPEG")
        >>> good = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        >>> bad = torch.tensor([0xFF, 0xD8, 0], dtype=torch.uint8)
        >>> [None if x is None else tuple(x.shape) for x in decode_jpegs([good, bad], 3, "cpu")]
        [(3, 4, 6), None]
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning
        )
        try:
            from torchcodec.decoders import decode_jpeg

            mode: Any = "GRAY" if channels == 1 else "RGB"
        except (ImportError, OSError):  # not installed, or its libraries built for another torch release
            from torchvision.io import ImageReadMode, decode_jpeg

            mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            return list(decode_jpeg(list(data), mode=mode, device=device))
        except RuntimeError:  # find the broken file(s): decode one by one
            images: list[torch.Tensor | None] = []
            for x in data:
                try:
                    images.append(decode_jpeg(x, mode=mode, device=device))
                except RuntimeError:
                    images.append(None)
            return images


def _not_a_file_reason(path: Path) -> str:
    if path.is_symlink():
        return "a broken or looping symbolic link"
    if path.is_dir():
        return "a directory, not an image file"
    if not path.exists():
        return "no such file (deleted after the folder was listed?)"
    return "not a regular file"


def to_8bit(img: Image.Image, channels: int) -> Image.Image:
    """The image as 8-bit ``L`` (``channels=1``) or ``RGB``: 16-bit and float scaled to 0..255, alpha over white.

    Example:
        >>> to_8bit(Image.new("I;16", (2, 2), 1000), 3).mode
        'RGB'
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr * (255.0 / _full_scale(img.mode, arr))).round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L" if channels == 1 else "RGB")


def _full_scale(mode: str, arr: np.ndarray) -> float:
    """The value that means white: fixed by the bit depth, never by the image's own maximum (a dark image stays dark).

    Example:
        >>> _full_scale("I;16", np.array([1000.0])), _full_scale("F", np.array([0.5])), _full_scale("I", np.array([70000.0]))
        (65535.0, 1.0, 4294967295.0)
    """
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode == "F" and lo >= 0 and hi <= 1:
        return 1.0  # float images in [0, 1]
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        return 65535.0  # 16-bit (PNG and TIFF open as I;16 or I)
    if mode == "I":
        return 4294967295.0 if lo >= 0 else 2147483647.0
    return hi if hi > 0 else 1.0  # floats of another range: their own maximum, the only scale they carry


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size ``_resize_center_crop`` resizes to before cropping: the shorter side becomes ``size``."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    if size != min(img.size):
        img = img.resize(_resized_size(*img.size, size), Image.BILINEAR, reducing_gap=3.0)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))
