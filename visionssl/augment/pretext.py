"""Pretext transforms, batched on the device: rotations, patch pairs, jigsaw tiles, permutation sets.

Every function takes a whole batch ``(B, C, H, W)`` and draws per-sample random parameters in one
call; patches are cut with one gather (index grids), never a Python loop over images. The presets
that make the single view the pretext methods start from (``rotation``, ``context``, ``jigsaw``,
``deepcluster``) are in ``visionssl.augment.pretext_presets``; the methods cut it up in their ``forward``.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 32, 32)
    >>> rotated, labels = rotate_batch(x)
    >>> rotated.shape, labels.tolist()[:5]
    (torch.Size([16, 3, 32, 32]), [0, 0, 0, 0, 1])
    >>> centre, neighbour, position = context_pairs(x, patch_size=8, gap=3, jitter=1)
    >>> centre.shape, neighbour.shape, position.shape
    (torch.Size([4, 3, 8, 8]), torch.Size([4, 3, 8, 8]), torch.Size([4]))
    >>> jigsaw_tiles(x, grid=3).shape  # 10 px cells, 8 px tiles
    torch.Size([4, 9, 3, 8, 8])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from visionssl.augment.permutations import hamming_permutations, min_hamming_distance  # noqa: F401  (re-exported)

# The 8 neighbours of the centre of a 3x3 grid in raster order: label -> (row, col) offset.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# Doersch et al. (2015): 96 px patches, 48 px gap, up to 7 px jitter (a 398 px footprint).
CONTEXT_PAPER_GEOMETRY = (96, 48, 7)


# ----------------------------------------------------------------------------- rotation
def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image: (4B, C, H, W) and labels 0..3 (multiples of 90 degrees).

    Rows ``k*B .. (k+1)*B - 1`` hold the batch rotated by ``k * 90`` degrees counter-clockwise
    (``torch.rot90``), so row ``i`` of the first block is the unrotated image ``i``.

    Example:
        >>> x = torch.arange(4.).view(1, 1, 2, 2)       # [[0, 1], [2, 3]]
        >>> r, y = rotate_batch(x)
        >>> r[1, 0].tolist(), y.tolist()                 # 90 degrees counter-clockwise
        ([[1.0, 3.0], [0.0, 2.0]], [0, 1, 2, 3])
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs a batch of square images (B, C, S, S), got shape {tuple(images.shape)}")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


# ------------------------------------------------------------------------------ patches
def extract_patches(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Cuts ``size`` x ``size`` patches at per-sample positions with one gather.

    Args:
        images: (B, C, H, W).
        top, left: (B, N) integer pixel coordinates of each patch's top-left corner (in bounds).
        size: patch side in pixels.

    Returns:
        (B, N, C, size, size); patch ``[b, n]`` is ``images[b, :, top:top+size, left:left+size]``.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> extract_patches(x, torch.tensor([[0, 2]]), torch.tensor([[1, 2]]), 2)[0, :, 0].tolist()
        [[[1.0, 2.0], [5.0, 6.0]], [[10.0, 11.0], [14.0, 15.0]]]
    """
    if images.ndim != 4 or top.shape != left.shape or top.ndim != 2 or top.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected images (B, C, H, W) and top/left (B, N); got {tuple(images.shape)}, "
            f"{tuple(top.shape)} and {tuple(left.shape)}"
        )
    if size > min(images.shape[-2:]):
        raise ValueError(f"patch size {size} is larger than the images ({images.shape[-2]}x{images.shape[-1]})")
    steps = torch.arange(size, device=images.device)
    rows = (top[..., None] + steps)[..., :, None]  # (B, N, size, 1)
    cols = (left[..., None] + steps)[..., None, :]  # (B, N, 1, size)
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    patches = images.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, N, size, size, C)
    return patches.permute(0, 1, 4, 2, 3)


def grid_positions(
    batch: int,
    image_size: int,
    patch_size: int,
    gap: int,
    jitter: int,
    grid: int = 3,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of a ``grid`` x ``grid`` layout of patches with gaps, per sample.

    Neighbouring patches are ``patch_size + gap`` pixels apart; the whole grid is placed at a random
    offset inside the image and each patch is moved by up to ``jitter`` pixels in each direction
    (independently), so two neighbours are always at least ``gap - 2 * jitter`` pixels apart.

    Returns:
        (top, left), each (B, grid**2), cells in raster order.

    Example:
        >>> top, left = grid_positions(2, 30, 8, 3, 0)  # the grid fills the image: no random offset
        >>> top[0].tolist(), left[0].tolist()
        ([0, 0, 0, 11, 11, 11, 22, 22, 22], [0, 11, 22, 0, 11, 22, 0, 11, 22])
    """
    footprint = grid * patch_size + (grid - 1) * gap + 2 * jitter
    if min(patch_size, gap + 1, jitter + 1) < 1:
        raise ValueError(f"need patch_size >= 1, gap >= 0 and jitter >= 0; got {patch_size}, {gap}, {jitter}")
    if footprint > image_size:
        raise ValueError(
            f"a {grid}x{grid} grid of {patch_size} px patches with a {gap} px gap and {jitter} px jitter spans "
            f"{footprint} px, more than the {image_size} px views; lower patch_size/gap/jitter or raise "
            f"augment.image_size to at least {footprint}"
        )
    kw = dict(device=device, generator=generator)
    cells = torch.arange(grid, device=device) * (patch_size + gap) + jitter
    rows, cols = cells.repeat_interleave(grid), cells.repeat(grid)
    slack = image_size - footprint + 1
    origin = torch.randint(0, slack, (batch, 2, 1), **kw)
    shift = torch.randint(-jitter, jitter + 1, (batch, 2, grid * grid), **kw)
    return origin[:, 0] + rows + shift[:, 0], origin[:, 1] + cols + shift[:, 1]


def context_geometry(image_size: int) -> tuple[int, int, int]:
    """(patch_size, gap, jitter) in the paper's proportions (96 : 48 : 7 of a 398 px footprint).

    Example:
        >>> context_geometry(32), context_geometry(398)
        ((7, 3, 1), (96, 48, 7))
    """
    footprint = 3 * CONTEXT_PAPER_GEOMETRY[0] + 2 * CONTEXT_PAPER_GEOMETRY[1] + 2 * CONTEXT_PAPER_GEOMETRY[2]
    patch, gap, jitter = (v * image_size // footprint for v in CONTEXT_PAPER_GEOMETRY)
    jitter = max(jitter, 1)
    while patch > 1 and 3 * patch + 2 * gap + 2 * jitter > image_size:
        patch -= 1
    return patch, gap, jitter


def context_pairs(
    images: torch.Tensor,
    patch_size: int,
    gap: int,
    jitter: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Doersch et al.'s patch pairs: the centre of a 3x3 grid and one random neighbour per sample.

    Returns:
        centre (B, C, P, P), neighbour (B, C, P, P), and the neighbour's position label (B,) in
        0..7, raster order without the centre (see ``NEIGHBOUR_OFFSETS``: 0 top-left, 1 top, 2
        top-right, 3 left, 4 right, 5 bottom-left, 6 bottom, 7 bottom-right).

    Example:
        >>> c, n, y = context_pairs(torch.rand(8, 3, 32, 32), patch_size=8, gap=3, jitter=1)
        >>> c.shape, int(y.min()) >= 0 and int(y.max()) <= 7
        (torch.Size([8, 3, 8, 8]), True)
    """
    b, device = images.shape[0], images.device
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"context prediction needs square views, got {images.shape[-2]}x{images.shape[-1]}")
    top, left = grid_positions(b, images.shape[-1], patch_size, gap, jitter, 3, device, generator)
    label = torch.randint(0, 8, (b,), device=device, generator=generator)
    cells = torch.stack([torch.full_like(label, 4), label + (label >= 4).long()], dim=1)  # skip the centre (4)
    patches = extract_patches(images, top.gather(1, cells), left.gather(1, cells), patch_size)
    return patches[:, 0], patches[:, 1], label


def color_drop(
    patches: torch.Tensor, noise_ratio: float = 0.01, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Keeps one random colour channel per image and replaces the others by Gaussian noise.

    Doersch et al.'s guard against chromatic aberration: the noise's standard deviation is
    ``noise_ratio`` times that of the kept channel (1/100 in the paper).

    Example:
        >>> x = torch.rand(4, 3, 8, 8)
        >>> y = color_drop(x)
        >>> int(((y - x).abs().flatten(2).amax(2) == 0).sum(1).min())  # one channel left untouched
        1
    """
    b, c = patches.shape[:2]
    keep = torch.randint(0, c, (b,), device=patches.device, generator=generator)
    mask = nn.functional.one_hot(keep, c).bool().view(b, c, 1, 1)
    kept = patches[torch.arange(b, device=patches.device), keep]  # (B, H, W)
    std = kept.flatten(1).std(1).view(b, 1, 1, 1) * noise_ratio
    noise = torch.randn(patches.shape, device=patches.device, generator=generator, dtype=patches.dtype) * std
    return torch.where(mask, patches, noise)


def color_project(patches: torch.Tensor) -> torch.Tensor:
    """Removes each pixel's component along the green-magenta axis a = (-1, 2, -1).

    Doersch et al.'s "projection": x <- (I - a a^T / a^T a) x, which shifts green and magenta toward
    gray, where chromatic aberration lives.

    Example:
        >>> color_project(torch.tensor([0., 3., 0.]).view(1, 3, 1, 1)).flatten().tolist()  # pure green -> gray
        [1.0, 1.0, 1.0]
    """
    if patches.shape[1] != 3:
        raise ValueError(f"colour projection needs 3-channel (RGB) patches, got {patches.shape[1]} channels")
    axis = torch.tensor([-1.0, 2.0, -1.0], device=patches.device, dtype=patches.dtype)
    along = torch.einsum("bchw,c->bhw", patches, axis) / axis.dot(axis)
    return patches - along[:, None] * axis.view(1, 3, 1, 1)


# ------------------------------------------------------------------------------- jigsaw
def default_tile_size(cell: int) -> int:
    """Jigsaw tile side for a grid cell: the paper's 64 px tiles in 75 px cells, scaled.

    Example:
        >>> default_tile_size(75), default_tile_size(10)
        (64, 8)
    """
    return max(1, cell * 64 // 75)


def jigsaw_tiles(
    images: torch.Tensor,
    grid: int = 3,
    tile_size: int | None = None,
    jitter: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cuts each image into ``grid`` x ``grid`` cells and one ``tile_size`` tile per cell.

    The cells cover the top-left ``grid * (S // grid)`` pixels. With ``jitter`` each tile sits at a
    random place inside its cell (per sample and cell); without it, in the cell's centre. Tiles
    smaller than their cells leave a gap between neighbours (Noroozi & Favaro's guard against
    matching edges).

    Returns:
        (B, grid**2, C, T, T), tiles in raster order.

    Example:
        >>> jigsaw_tiles(torch.rand(2, 3, 96, 96), tile_size=27).shape
        torch.Size([2, 9, 3, 27, 27])
    """
    b, _, h, w = images.shape
    cell = min(h, w) // grid
    tile = default_tile_size(cell) if tile_size is None else tile_size
    if not 1 <= tile <= cell:
        raise ValueError(
            f"tile_size must be between 1 and the cell size {cell} ({min(h, w)} px / grid {grid}), got {tile}"
        )
    device, n = images.device, grid * grid
    if jitter:
        offset = torch.randint(0, cell - tile + 1, (b, 2, n), device=device, generator=generator)
    else:
        offset = torch.full((b, 2, n), (cell - tile) // 2, device=device)
    cells = torch.arange(grid, device=device) * cell
    top = cells.repeat_interleave(grid) + offset[:, 0]
    left = cells.repeat(grid) + offset[:, 1]
    return extract_patches(images, top, left, tile)


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorders each sample's tiles by its permutation: ``out[b, j] = tiles[b, permutations[index[b], j]]``.

    Undo with the inverse permutation, ``shuffle_tiles(out, permutations.argsort(1), index)``.

    Example:
        >>> tiles = torch.arange(3.).view(1, 3, 1, 1, 1)
        >>> shuffle_tiles(tiles, torch.tensor([[2, 0, 1]]), torch.tensor([0])).flatten().tolist()
        [2.0, 0.0, 1.0]
    """
    order = permutations[index]  # (B, N)
    if order.shape != tiles.shape[:2]:
        raise ValueError(f"permutations of {permutations.shape[-1]} tiles cannot reorder {tiles.shape[1]} tiles")
    return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], order]


def untile(tiles: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """Lays (B, grid**2, C, T, T) tiles out as (B, C, grid*T, grid*T) images, raster order.

    Example:
        >>> x = torch.rand(2, 3, 30, 30)
        >>> torch.equal(untile(jigsaw_tiles(x, tile_size=10, jitter=False)), x)
        True
    """
    b, n, c, t, _ = tiles.shape
    if n != grid * grid:
        raise ValueError(f"{n} tiles do not make a {grid}x{grid} grid")
    return tiles.reshape(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * t, grid * t)


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5, per_channel: bool = True) -> torch.Tensor:
    """Zero mean and unit standard deviation per tile: per channel, or with ``per_channel=False`` one
    mean and std over the tile's channels and pixels together (``tiles``: (..., C, H, W)).

    Noroozi & Favaro normalise each tile independently so that low-level statistics (brightness,
    contrast) shared by neighbouring tiles cannot give the puzzle away; the reference port
    (bbrattoli/JigsawPuzzlePytorch) takes one mean and std over the tile's channels and pixels.

    Example:
        >>> t = normalize_tiles(torch.rand(2, 9, 3, 8, 8) * 5 + 3)
        >>> round(float(t.mean((-2, -1)).abs().max()), 4), round(float(t.std((-2, -1), unbiased=False).mean()), 3)
        (0.0, 1.0)
        >>> one = normalize_tiles(torch.rand(2, 9, 3, 8, 8), per_channel=False)
        >>> round(float(one.mean((-3, -2, -1)).abs().max()), 4), round(float(one.std((-3, -2, -1), unbiased=False).mean()), 3)
        (0.0, 1.0)
    """
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    mean = tiles.mean(dims, keepdim=True)
    var = tiles.var(dims, keepdim=True, unbiased=False)
    return (tiles - mean) * torch.rsqrt(var + eps)


def shift_tile_channels(tiles: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Moves each channel of each tile (tiles: (..., C, H, W)) by its own random whole-pixel offset in
    [-max_shift, max_shift] along each axis, repeating the edge pixels: Noroozi & Favaro's spatial jitter
    of the colour channels (+-0, 1 or 2 px on 64 px tiles), which hides the chromatic aberration that
    tells a tile's place in the image.

    Example:
        >>> t = torch.arange(16.0).view(1, 1, 1, 4, 4).expand(2, 9, 3, 4, 4)
        >>> out = shift_tile_channels(t, 1)
        >>> out.shape, bool((out != t).any()), bool(shift_tile_channels(t, 0).equal(t))
        (torch.Size([2, 9, 3, 4, 4]), True, True)
    """
    if max_shift == 0:
        return tiles
    h, w = tiles.shape[-2:]
    flat = tiles.reshape(-1, h, w)
    m = flat.shape[0]
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (m, 1), generator=generator).to(tiles.device) for _ in range(2))
    rows = (torch.arange(h, device=tiles.device) + dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=tiles.device) + dx).clamp(0, w - 1)
    out = flat.gather(1, rows[:, :, None].expand(m, h, w)).gather(2, cols[:, None, :].expand(m, h, w))
    return out.view(tiles.shape)


def pixelate(
    patches: torch.Tensor, p: float = 1 / 3, min_fraction: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Doersch et al.'s robustness to pixelation: each patch (B, C, P, P) is, with probability ``p``,
    downsampled to a random side in [``min_fraction`` P, P] (area averaging) and upsampled back (bilinear).

    The paper downsamples patches to as little as 100 pixels in all (about a tenth of the side of its
    96 px patches). One resize per distinct side, at most P of them: no loop over images.

    Example:
        >>> x = torch.rand(6, 3, 10, 10)
        >>> out = pixelate(x, p=1.0)
        >>> out.shape, bool((out != x).any())
        (torch.Size([6, 3, 10, 10]), True)
    """
    b, size = patches.shape[0], patches.shape[-1]
    low = max(1, math.ceil(min_fraction * size))
    chosen = torch.rand(b, device=patches.device, generator=generator) < p
    sides = torch.randint(low, size, (b,), device=patches.device, generator=generator) if size > low else None
    if sides is None:
        return patches
    sides = torch.where(chosen, sides, torch.full_like(sides, size))
    out = patches.clone()
    for side in torch.unique(sides[chosen]).tolist():
        idx = (sides == side).nonzero().squeeze(1)
        small = torch.nn.functional.interpolate(patches[idx], size=(side, side), mode="area")
        out[idx] = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return out
