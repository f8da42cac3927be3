"""Streaming training data: an image-file loader (``visionssl.data``) paired with a preset's device views
(``visionssl.augment``). The composition lives here, above both.
"""

from __future__ import annotations

from typing import Any

import torch

from visionssl.augment import MultiView
from visionssl.augment.preset_split import StreamViews, split_preset
from visionssl.data.crop_loader import ImageFiles, StreamLoader


def stream_loader(
    files: ImageFiles, augment: MultiView, batch_size: int, device: str | torch.device = "cpu", **kwargs: Any
) -> tuple[StreamLoader, StreamViews]:
    """The streaming pair for a preset: a ``StreamLoader`` cutting its crops and the ``StreamViews`` finishing them.

    ``kwargs`` go to ``StreamLoader`` (seed, num_workers, gpu_decode, skip_bad_images, rank, world_size).
    Crops are grayscale when the backbone takes one channel, else RGB.

    Example:
        >>> import tempfile, torch, visionssl as vs
        >>> from pathlib import Path
        >>> from visionssl.data.crop_loader import list_image_files
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for c in ("cat", "dog"):
        ...     for i in range(4):
        ...         (Path(root) / c).mkdir(exist_ok=True)
        ...         Image.new("RGB", (48, 40), (60 * i, 100, 0)).save(f"{root}/{c}/{i}.jpg")
        >>> files = list_image_files(root, split="all")
        >>> augment = vs.augment.create("simclr", image_size=16)
        >>> loader, views = stream_loader(files, augment, batch_size=4, num_workers=0)
        >>> indices, crops = next(iter(loader.epoch(0)))
        >>> crops.shape, crops.dtype, [tuple(v.shape) for v in views(crops)]
        (torch.Size([4, 2, 3, 16, 16]), torch.uint8, [(4, 3, 16, 16), (4, 3, 16, 16)])
    """
    specs, views = split_preset(augment)
    kwargs.setdefault("channels", 1 if augment.channels == 1 else 3)
    return StreamLoader(files, specs, batch_size, device, **kwargs), views.to(device)
