"""Streaming training data: an image-file loader (``visionssl.data``) paired with a preset's device views
(``visionssl.augment``). The composition lives here, above both.
"""
from __future__ import annotations

from typing import Any

import torch

from visionssl.augment import MultiView
from visionssl.augment.stream import StreamViews, split_preset
from visionssl.data.stream import ImageFiles, StreamLoader


def stream_loader(
    files: ImageFiles, augment: MultiView, batch_size: int, device: str | torch.device = "cpu", **kwargs: Any
) -> tuple[StreamLoader, StreamViews]:
    """The streaming pair for a preset: a ``StreamLoader`` cutting its crops and the ``StreamViews`` finishing them.

    ``kwargs`` go to ``StreamLoader`` (seed, num_workers, gpu_decode, skip_bad_images, rank, world_size).
    Crops are grayscale when the backbone takes one channel, else RGB.
    """
    specs, views = split_preset(augment)
    kwargs.setdefault("channels", 1 if augment.channels == 1 else 3)
    return StreamLoader(files, specs, batch_size, device, **kwargs), views.to(device)
