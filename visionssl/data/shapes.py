"""``shapes``: a procedurally generated, labelled RGB image set (10 shape types), made from a seed, nothing downloaded.

Every image holds one filled shape (circle, square, triangle, plus, ring, star, semicircle, crescent, bar,
frame) at a random position, scale and rotation. Colours of the shape and the background are drawn
independently of the class, the shape is filled flat, with stripes or with a checkerboard (the second
label, ``texture``), and the background carries a random gradient, a faint grating and pixel noise. So the
class is a matter of form: colour alone does not tell it, and an untrained network's kNN lands well below a
trained one's.

``shapes:N`` holds N images in its ``train``/``test`` splits (a seeded stratified 75/25 split, as elpv's) and a
separate ``holdout`` split of N/4 more images drawn from another random stream: the set to report on last,
never to tune on. ``all`` is train and test; the holdout is only ever loaded by name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visionssl.data.cache import cached_arrays
from visionssl.data.dataset import ImageDataset
from visionssl.data.sources import register_dataset, stratified_split
from visionssl.errors import DataError

SHAPES = ("circle", "square", "triangle", "plus", "ring", "star", "semicircle", "crescent", "bar", "frame")
TEXTURES = ("flat", "stripes", "checker")
DEFAULT_SIZE = 4000
MIN_SIZE = 4 * len(SHAPES)  # every class keeps at least one image in the test split
SHAPES_VERSION = 1
HOLDOUT_STREAM = 1_000_003  # the holdout's generator seed is the set's seed plus this
_CHUNK = 512


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether each point (u, v) of the shape's own frame (the shape fits the unit disc) lies inside ``SHAPES[shape]``."""
    name = SHAPES[shape]
    if name in ("square", "frame"):
        box = torch.maximum(u.abs(), v.abs())
        return box < 0.65 if name == "square" else (box < 0.8) & (box > 0.5)
    if name == "triangle":
        return (v > -0.5) & (v < 1 - math.sqrt(3) * u.abs())
    if name == "plus":
        return ((u.abs() < 0.25) & (v.abs() < 0.9)) | ((v.abs() < 0.25) & (u.abs() < 0.9))
    if name == "bar":
        return (u / 0.95) ** 2 + (v / 0.35) ** 2 < 1
    r = torch.sqrt(u * u + v * v)
    if name == "circle":
        return r < 0.85
    if name == "ring":
        return (r > 0.5) & (r < 0.9)
    if name == "star":
        return r < 0.55 + 0.35 * torch.cos(5 * torch.atan2(v, u))
    if name == "semicircle":
        return (r < 0.9) & (v > -0.15)
    return (r < 0.9) & (torch.sqrt((u - 0.45) ** 2 + v * v) > 0.7)  # crescent


def _draw_parameters(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Each image's class, texture and nuisance factors, drawn once per image (independent of the image size)."""
    g = torch.Generator().manual_seed(seed)
    shape = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]
    texture = (torch.arange(n) % len(TEXTURES))[torch.randperm(n, generator=g)]

    def uniform(lo: float, hi: float, *size: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *size, generator=g)

    scale = uniform(0.45, 0.8)
    # one of shape and background dark (channels in [0, 0.4]), the other bright ([0.6, 1]), which one at random:
    # every colour can be either, and the shape always stands out (untrained networks' kNN is colour-bound otherwise)
    dark, bright = 0.4 * torch.rand(n, 3, generator=g), 0.6 + 0.4 * torch.rand(n, 3, generator=g)
    dark_shape = torch.rand(n, 1, generator=g) < 0.5
    fg, bg = torch.where(dark_shape, dark, bright), torch.where(dark_shape, bright, dark)
    return {
        "shape": shape,
        "texture": texture,
        "scale": scale,
        "center": uniform(-1, 1, 2) * (0.95 - scale)[:, None],
        "angle": uniform(0, 2 * math.pi),
        "fg": fg,
        "bg": bg,
        "fill_freq": uniform(3.0, 6.0),  # stripes/checks per unit of the shape's radius
        "fill_angle": uniform(0, math.pi),
        "gradient": uniform(-0.15, 0.15, 2),
        "grating": torch.stack([uniform(0, 0.08), uniform(1.5, 6.0), uniform(0, math.pi), uniform(0, 2 * math.pi)], 1),
        "noise": uniform(0.0, 0.04),
    }


def _render(p: dict[str, torch.Tensor], size: int, seed: int) -> np.ndarray:
    """uint8 (N, 3, size, size) images of the parameters ``p``, drawn at twice the size and averaged (antialiased)."""
    n, fine = len(p["shape"]), 2 * size
    coords = (torch.arange(fine) + 0.5) / fine * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    noise = torch.Generator().manual_seed(seed)
    for start in range(0, n, _CHUNK):
        q = {k: v[start : start + _CHUNK] for k, v in p.items()}

        def per_image(t: torch.Tensor) -> torch.Tensor:
            return t[:, None, None]

        dx, dy = x - per_image(q["center"][:, 0]), y - per_image(q["center"][:, 1])
        cos, sin = per_image(torch.cos(q["angle"])), per_image(torch.sin(q["angle"]))
        u, v = (dx * cos + dy * sin) / per_image(q["scale"]), (dy * cos - dx * sin) / per_image(q["scale"])
        mask = torch.zeros_like(u)
        for k in q["shape"].unique().tolist():
            of = q["shape"] == k
            mask[of] = _inside(k, u[of], v[of]).float()
        fa = per_image(q["fill_angle"])
        a, b = u * torch.cos(fa) + v * torch.sin(fa), v * torch.cos(fa) - u * torch.sin(fa)
        phase = math.pi * per_image(q["fill_freq"])
        stripes = (torch.sin(phase * a) > 0).float()
        checker = ((torch.sin(phase * a) * torch.sin(phase * b)) > 0).float()
        tex = per_image(q["texture"])
        pattern = torch.where(tex == 1, stripes, torch.where(tex == 2, checker, torch.zeros_like(stripes)))
        gr = q["grating"]
        wave = per_image(gr[:, 0]) * torch.sin(
            math.pi * per_image(gr[:, 1]) * (x * per_image(torch.cos(gr[:, 2])) + y * per_image(torch.sin(gr[:, 2])))
            + per_image(gr[:, 3])
        )
        ramp = per_image(q["gradient"][:, 0]) * x + per_image(q["gradient"][:, 1]) * y
        background = q["bg"][:, :, None, None] + (ramp + wave)[:, None]
        fg = q["fg"][:, :, None, None]
        extreme = (
            fg.mean(1, keepdim=True) > 0.5
        ).float()  # the pattern moves the shape's colour away from the background
        foreground = torch.lerp(fg, extreme, 0.5 * pattern[:, None])
        img = F.avg_pool2d(torch.lerp(background, foreground, mask[:, None]), 2)
        img = img + per_image(q["noise"])[:, None] * torch.randn(img.shape, generator=noise)
        out[start : start + len(img)] = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out


def generate_shapes(n: int, image_size: int = 32, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` images (uint8, (n, 3, image_size, image_size)) and their labels ``{"shape", "texture"}``, from ``seed``.

    The same ``seed`` gives the same images; the classes are balanced (``n`` a multiple of 10: exactly).

    Example:
        >>> images, labels = generate_shapes(20, image_size=16, seed=0)
        >>> images.shape, images.dtype, labels["shape"].bincount().tolist()
        (torch.Size([20, 3, 16, 16]), torch.uint8, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    p = _draw_parameters(n, seed)
    images = torch.from_numpy(_render(p, image_size, seed + 1))
    return images, {"shape": p["shape"].clone(), "texture": p["texture"].clone()}


def _cached(n: int, size: int, seed: int, cache_dir: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    def build():
        images, labels = generate_shapes(n, size, seed)
        return images.numpy(), {k: v.tolist() for k, v in labels.items()}

    images, info = cached_arrays(f"shapes-{n}-{seed}-{size}-v{SHAPES_VERSION}", build, cache_dir)
    return torch.from_numpy(np.ascontiguousarray(images)), {
        k: torch.tensor(v, dtype=torch.long) for k, v in info.items()
    }


@register_dataset("shapes")
def shapes(
    arg: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    seed: int = 0,
    label: str = "shape",
    cache_dir: Any = None,
    **_: Any,
) -> ImageDataset:
    """The generated shapes set (see the module's docstring): ``shapes[:N]``, N images in train + test
    (default 4000), splits ``train``, ``test``, ``all`` (train + test) and ``holdout`` (N/4 images of their own).

    Labels: ``shape`` (10 classes, the default) and ``texture`` (flat, stripes, checker). Native size 32 px;
    any ``image_size`` is drawn at that size (not resized).

    Example:
        >>> from visionssl.data import load_dataset
        >>> ds = load_dataset("shapes:40", "test", image_size=16, cache_dir="")
        >>> len(ds), ds.label, ds.num_classes, ds.images.shape[1:]
        (10, 'shape', 10, torch.Size([3, 16, 16]))
    """
    n = int(arg) if arg and arg.strip().isdigit() else (DEFAULT_SIZE if not arg else 0)
    if n < MIN_SIZE:
        raise DataError(
            f"data 'shapes:{arg}': N must be a whole number of images >= {MIN_SIZE} (4 per class), e.g. shapes:4000"
        )
    if label not in ("shape", "texture"):
        raise DataError(f"shapes has no label {label!r}; valid: shape, texture")
    size = image_size or 32
    if split == "holdout":
        images, labels = _cached(n // 4, size, seed + HOLDOUT_STREAM, cache_dir)
    else:
        images, labels = _cached(n, size, seed, cache_dir)
    classes = {"shape": list(SHAPES), "texture": list(TEXTURES)}
    ds = ImageDataset(images, labels, label, classes, f"shapes:{n}", split)
    if split in ("holdout", "all"):
        return ds
    train, test = stratified_split(labels["shape"].numpy(), seed=seed)
    out = ds.subset(train if split == "train" else test)
    out.split = split
    return out


shapes.splits = ("train", "test", "all", "holdout")
