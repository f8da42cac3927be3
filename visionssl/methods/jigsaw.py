"""Jigsaw puzzles (Noroozi & Favaro, 2016, arXiv 1603.09246): which permutation shuffled the 9 tiles?"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visionssl.augment.pretext import (
    hamming_permutations,
    jigsaw_tiles,
    normalize_tiles,
    shift_tile_channels,
    shuffle_tiles,
)
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp


@register_method("jigsaw")
class Jigsaw(SSLMethod):
    """The context-free network: the view is cut into a ``grid`` x ``grid`` of cells, one tile is
    cropped at a random place inside each cell (the gap between tiles hides edge continuity), the
    tiles are shuffled by one of ``num_permutations`` permutations chosen for large Hamming distance,
    each tile's colour channels are moved by a pixel or two each (the paper's spatial channel jitter)
    and the tile is normalised on its own (one mean and std over its channels and pixels, as the
    reference port), the shared backbone encodes
    all ``grid**2 * B`` tiles in one pass, a per-tile layer (the paper's fc6) maps each feature to
    ``tile_dim``, and an MLP on the concatenated tile features predicts the permutation's index
    (cross entropy over ``num_permutations`` classes).

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        num_permutations: size of the permutation set (paper: 1000; 100 is an easier task).
        grid: tiles per side (paper: 3).
        tile_size: tile side in pixels; ``None``: 64/75 of the cell, as the paper (8 px at 32 px views).
        permutation_seed: seed of the permutation set (deterministic; cached on disk).
        permutation_selection: ``"maxmin"`` (largest minimum distance) or ``"maxavg"`` (paper's Algorithm 1).
        tile_dim: per-tile layer width (paper: fc6, 1024); ``None``: concatenate the backbone features.
        head_hidden_dim: hidden width of the classifier MLP (paper: fc7, 4096).
        head_layers: linear layers of the classifier (paper: fc7 + fc8 = 2).
        channel_shift: largest shift in pixels of a tile's colour channel, each channel and axis drawn
            on its own (paper: +-2 px on 64 px tiles); ``None``: ``round(2 * tile side / 64)``, which is
            0 (off) for tiles under 16 px; 0 turns it off.
        tile_norm: ``"tile"`` (one mean/std per tile, the reference) or ``"channel"`` (per channel,
            the behaviour before issue 19).

    Returns (forward): ``loss``, ``embedding`` (mean tile feature per image, detached) and
    ``jigsaw/accuracy`` (permutation accuracy, 0-d).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("jigsaw", backbone="resnet10t_cifar", num_permutations=100, tile_dim=64,
        ...                      head_hidden_dim=128)
        >>> out = m([torch.randn(2, 3, 32, 32)])  # 18 tiles of 8 px
        >>> out["loss"].backward(); out["embedding"].shape
        torch.Size([2, 512])
    """

    augmentation = "jigsaw"
    hparam_choices: ClassVar[dict] = {"permutation_selection": ("maxmin", "maxavg"), "tile_norm": ("tile", "channel")}
    num_views = 1
    cpu_bf16 = False  # small patches: oneDNN's bf16 backward gave non-finite gradients on their 1x1 maps

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        num_permutations: int = 1000,
        grid: int = 3,
        tile_size: int | None = None,
        permutation_seed: int = 0,
        permutation_selection: str = "maxmin",
        tile_dim: int | None = 1024,
        head_hidden_dim: int = 4096,
        head_layers: int = 2,
        channel_shift: int | None = None,
        tile_norm: str = "tile",
    ):
        super().__init__(backbone, backbone_kwargs)
        if head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers}")
        if tile_norm not in ("tile", "channel"):
            raise ValueError(f"tile_norm must be 'tile' or 'channel', got {tile_norm!r}")
        if channel_shift is not None and channel_shift < 0:
            raise ValueError(f"channel_shift must be >= 0 pixels or None (2 px per 64 px of tile), got {channel_shift}")
        self.channel_shift, self.tile_norm = channel_shift, tile_norm
        self.grid, self.tile_size = grid, tile_size
        perms = hamming_permutations(num_permutations, grid * grid, permutation_seed, permutation_selection)
        self.register_buffer("permutations", perms)  # saved with the weights: the classes stay defined
        if tile_dim is None:
            self.tile_head, tile_dim = nn.Identity(), self.num_features
        else:
            self.tile_head = nn.Sequential(
                nn.Linear(self.num_features, tile_dim, bias=False), nn.BatchNorm1d(tile_dim), nn.ReLU(inplace=True)
            )
        self.classifier = mlp(grid * grid * tile_dim, head_hidden_dim, num_permutations, num_layers=head_layers)

    @staticmethod
    def check_config(hparams: dict[str, Any], config: Any) -> None:
        """Called by ``visionssl.engine.config.validate`` before any work starts: the tiles must fit the view."""
        size, grid = config.augment.image_size, hparams["grid"]
        if grid < 2:
            raise ValueError(f"method.grid={grid} must be >= 2 (a puzzle needs at least 2x2 tiles)")
        try:
            jigsaw_tiles(torch.zeros(1, 1, size, size), grid, hparams["tile_size"], jitter=False)
        except ValueError as exc:
            raise ValueError(
                f"jigsaw (method.grid={grid}, method.tile_size, augment.image_size={size}): {exc}"
            ) from None

    @property
    def num_permutations(self) -> int:
        return self.permutations.shape[0]

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 1:
            raise ValueError(f"jigsaw takes 1 view, got {len(views)}")
        x = views[0]
        b, n = x.shape[0], self.grid * self.grid
        index = torch.randint(0, self.num_permutations, (b,), device=x.device)
        tiles = shuffle_tiles(jigsaw_tiles(x, self.grid, self.tile_size), self.permutations, index)
        shift = round(2 * tiles.shape[-1] / 64) if self.channel_shift is None else self.channel_shift
        tiles = shift_tile_channels(tiles, shift)
        tiles = normalize_tiles(tiles, per_channel=self.tile_norm == "channel")
        features = self.backbone(tiles.flatten(0, 1))  # (B * n, D), tiles of a sample adjacent
        logits = self.classifier(self.tile_head(features).reshape(b, -1))
        return {
            "loss": F.cross_entropy(logits.float(), index),
            "embedding": features.detach().view(b, n, -1).mean(1),
            "jigsaw/accuracy": (logits.argmax(1) == index).float().mean().detach(),
        }
