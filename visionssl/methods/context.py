"""Context prediction (Doersch et al., 2015, arXiv 1505.05192): where is this patch relative to that one?"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visionssl.augment.pretext import (
    color_drop,
    color_project,
    context_geometry,
    context_pairs,
    grid_positions,
    normalize_tiles,
    pixelate,
)
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp

COLOR_MODES = ("drop", "project", "none")


@register_method("context")
class ContextPrediction(SSLMethod):
    """Relative patch position: from a 3x3 grid of patches separated by a gap and each moved by a
    random jitter, take the centre patch and one of its 8 neighbours (chosen per sample); about a third
    of the patches are downsampled (to as little as a tenth of their side) and upsampled back, and each
    patch is normalised on its own (zero mean, unit std), as the reference code does; the shared
    backbone encodes both and a classifier on the two feature vectors joined predicts which of the 8
    positions the neighbour came from (cross entropy over 8 classes).

    The paper's head: the two AlexNet-style towers share weights up to fc6; their fc6 outputs are
    concatenated and fed to fc7 (4096) and fc8 (8 classes). Here the backbone's pooled features stand for
    the tower (fc6 included) and ``head_layers=2`` makes fc7 + fc8 (an MLP with BatchNorm in the hidden
    layer, where the paper's fc7 has none).

    Shortcuts the paper closes: the gap and jitter keep low-level cues (edges running across patch
    borders) from giving the position away; chromatic aberration (the lens shifts colours toward the
    image border) is hidden by colour dropping (keep one random channel per patch, the others become
    noise) or by projecting colours off the green-magenta axis.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        patch_size, gap, jitter: pixels within the view, or a fraction of the view's side (a number below 1:
            0.3125 is 10 px at 32 px and 20 px at 64 px). ``None``: the paper's 96 : 48 : 7 proportions
            scaled to the view (7, 3, 1 at 32 px; 96, 48, 7 at 398 px).
        color: ``"drop"`` (paper), ``"project"`` (paper's alternative) or ``"none"``.
        noise_ratio: std of the noise replacing dropped channels, relative to the kept channel's.
        head_hidden_dim: hidden width of the classifier MLP (paper: 4096).
        head_layers: linear layers in the classifier (paper: fc7 + fc8 = 2).
        pixelate_p: probability that a patch is downsampled and upsampled back (reference: about 1/3).
        normalize_patches: zero mean and unit std per patch (the reference's per-patch normalisation).

    Returns (forward): ``loss``, ``embedding`` (features of the centre patches, detached) and
    ``context/accuracy`` (position accuracy, 0-d).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("context", backbone="resnet10t_cifar", patch_size=8, gap=3, jitter=1)
        >>> out = m([torch.randn(4, 3, 32, 32)])
        >>> out["loss"].backward(); sorted(out)
        ['context/accuracy', 'embedding', 'loss']
    """

    augmentation = "context"
    hparam_choices: ClassVar[dict] = {"color": COLOR_MODES}
    hparam_ranges: ClassVar[dict] = {"patch_size": (0, None, False)}  # pixels, or a fraction (below 1) of the view
    num_views = 1
    cpu_bf16 = False  # small patches: oneDNN's bf16 backward gave non-finite gradients on their 1x1 maps

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        patch_size: float | None = None,
        gap: float | None = None,
        jitter: float | None = None,
        color: str = "drop",
        noise_ratio: float = 0.01,
        head_hidden_dim: int = 4096,
        head_layers: int = 2,
        pixelate_p: float = 1 / 3,
        normalize_patches: bool = True,
    ):
        super().__init__(backbone, backbone_kwargs)
        if not 0 <= pixelate_p <= 1:
            raise ValueError(f"pixelate_p must be in [0, 1], got {pixelate_p}")
        self.pixelate_p, self.normalize_patches = pixelate_p, normalize_patches
        if color not in COLOR_MODES:
            raise ValueError(f"color must be one of {', '.join(COLOR_MODES)}; got {color!r}")
        if head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers}")
        for name, value in (("patch_size", patch_size), ("gap", gap), ("jitter", jitter)):
            check_geometry_value(name, value)
        self.patch_size, self.gap, self.jitter = patch_size, gap, jitter
        self.color = color
        self.noise_ratio = noise_ratio
        self.classifier = mlp(2 * self.num_features, head_hidden_dim, 8, num_layers=head_layers)

    @staticmethod
    def check_config(hparams: dict[str, Any], config: Any) -> None:
        """Called by ``visionssl.engine.config.validate`` before any work starts: the grid must fit the view."""
        size = config.augment.image_size
        chosen = (hparams["patch_size"], hparams["gap"], hparams["jitter"])
        for name, value in zip(("method.patch_size", "method.gap", "method.jitter"), chosen):
            check_geometry_value(name, value)
        geometry = resolve_geometry(chosen, size)
        try:
            grid_positions(1, size, *geometry, generator=torch.Generator().manual_seed(0))
        except ValueError as exc:
            raise ValueError(f"context (method.patch_size/gap/jitter, augment.image_size={size}): {exc}") from None

    def geometry(self, image_size: int) -> tuple[int, int, int]:
        """(patch_size, gap, jitter) used for views of ``image_size`` pixels."""
        return resolve_geometry((self.patch_size, self.gap, self.jitter), image_size)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 1:
            raise ValueError(f"context prediction takes 1 view, got {len(views)}")
        x = views[0]
        centre, neighbour, label = context_pairs(x, *self.geometry(x.shape[-1]))
        patches = torch.cat([centre, neighbour])
        if self.pixelate_p > 0:
            patches = pixelate(patches, self.pixelate_p)
        if self.color == "drop" and patches.shape[1] > 1:
            patches = color_drop(patches, self.noise_ratio)  # each patch keeps its own channel
        elif self.color == "project":
            patches = color_project(patches)
        if self.normalize_patches:  # one mean/std per patch: per channel would blow the dropped channels' noise up
            patches = normalize_tiles(patches, per_channel=False)
        features = self.backbone(patches)
        logits = self.classifier(torch.cat(features.chunk(2), dim=1))
        return {
            "loss": F.cross_entropy(logits.float(), label),
            "embedding": features[: x.shape[0]].detach(),
            "context/accuracy": (logits.argmax(1) == label).float().mean().detach(),
        }


def check_geometry_value(name: str, value: float | None) -> None:
    """Raises ValueError unless ``value`` is None, whole pixels (>= 0) or a fraction of the view's side (below 1).

    Example:
        >>> check_geometry_value("gap", 0.05), check_geometry_value("gap", 3)
        (None, None)
    """
    if value is not None and (value < 0 or (value >= 1 and value != int(value))):
        raise ValueError(
            f"{name} must be whole pixels (>= 0), a fraction of the view's side (below 1) or None; got {value}"
        )


def resolve_geometry(chosen: tuple[float | None, float | None, float | None], image_size: int) -> tuple[int, int, int]:
    """(patch_size, gap, jitter) in pixels for views of ``image_size``: each value as ``to_pixels`` reads it,
    ``None`` the paper's proportions (``context_geometry``).

    Example:
        >>> resolve_geometry((0.3125, None, 0), 32)
        (10, 3, 0)
    """
    auto = context_geometry(image_size)
    return tuple(a if v is None else to_pixels(v, image_size) for a, v in zip(auto, chosen))  # type: ignore[return-value]


def to_pixels(value: float, image_size: int) -> int:
    """Whole pixels of a context geometry value: itself, or a fraction (below 1) of ``image_size`` rounded.

    Example:
        >>> to_pixels(3, 32), to_pixels(0.3125, 32), to_pixels(0.3125, 64), to_pixels(0, 64)
        (3, 10, 20, 0)
    """
    return round(value * image_size) if value < 1 else int(value)
