"""The augmentation half of streaming (``data.stream=true``): a preset split into CPU crops and device views.

The CPU workers of ``visionssl.data.crop_loader.StreamLoader`` cut each view's random resized crop; the
``StreamViews`` returned here apply the rest of the preset (flip, colour, blur, normalisation) on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from visionssl.augment import MultiView, to_float
from visionssl.augment.ops import RandomResizedCropFlip

CropParams = tuple[int, tuple[float, float], tuple[float, float]]  # (size, scale, ratio): data.stream.CropSpec's fields


class StreamViews(MultiView):
    """The device half of a preset: uint8 crops (B, V, C, S, S) -> V normalised views (B, C', S, S).

    View v goes through pipeline v (flip, colour, blur, ... without the crop) and the normalisation;
    grayscale crops are replicated to the backbone's channels, as ``MultiView`` does.
    """

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> list[torch.Tensor]:
        if crops.ndim != 5 or crops.shape[1] != self.num_views:
            raise ValueError(f"expected crops (B, {self.num_views}, C, S, S), got shape {tuple(crops.shape)}")
        return [
            self.normalize(p(to_float(crops[:, v], self.channels, self.dtype))).contiguous()
            for v, p in enumerate(self.pipelines)
        ]


def split_preset(augment: MultiView) -> tuple[list[CropParams], StreamViews]:
    """Splits a preset into the crops the CPU workers cut, ``(size, scale, ratio)`` per view, and the
    ``StreamViews`` the device applies.

    Each view pipeline must start from a random resized crop (``RandomResizedCropFlip`` of the fused
    backend, whose flips and blur stay on the device, or Kornia's ``RandomResizedCrop``).

    Example:
        >>> import visionssl as vs
        >>> crops, views = split_preset(vs.augment.create("byol", image_size=32))
        >>> crops[0], views.num_views
        ((32, (0.08, 1.0), (0.75, 1.3333333333333333)), 2)
    """
    import kornia.augmentation as K

    if augment.num_views != len(augment.pipelines):  # e.g. multicrop: one pipeline per crop group, not per view
        raise ValueError(
            f"data.stream cannot split the {type(augment).__name__} preset ({augment.num_views} views from "
            f"{len(augment.pipelines)} crop groups); train from in-memory data (data.stream=false)"
        )
    specs, pipelines = [], []
    for view, pipeline in enumerate(augment.pipelines):
        modules = list(pipeline) if isinstance(pipeline, nn.Sequential) else [pipeline]
        crop = next((m for m in modules if isinstance(m, (RandomResizedCropFlip, K.RandomResizedCrop))), None)
        if crop is None:
            raise ValueError(
                f"view {view} of this augmentation preset has no random resized crop ({type(pipeline).__name__}); "
                "data.stream=true moves that crop to the CPU workers, so it needs a crop-based preset "
                "(simclr, moco, simsiam, byol, vicreg)"
            )
        if isinstance(crop, RandomResizedCropFlip):
            spec, replacement = (crop.size, tuple(crop.scale), tuple(crop.ratio)), crop.uncropped()
        else:
            params = crop._param_generator
            spec, replacement = (int(crop.flags["size"][0]), tuple(params.scale), tuple(params.ratio)), nn.Identity()
        specs.append(spec)
        pipelines.append(nn.Sequential(*[replacement if m is crop else m for m in modules]))
    return specs, StreamViews(pipelines, channels=augment.channels, normalize=augment.normalize, dtype=augment.dtype)
