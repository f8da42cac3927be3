"""The batched pretext transforms: rotations, context pairs, jigsaw tiles, permutation sets, presets."""

import itertools

import numpy as np
import pytest
import torch

import visionssl as vs
from visionssl.augment import permutations
from visionssl.augment import pretext as P


def coordinate_image(batch: int, size: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 the sample index."""
    rows = torch.arange(size, dtype=torch.float32).view(1, size, 1).expand(batch, size, size)
    cols = torch.arange(size, dtype=torch.float32).view(1, 1, size).expand(batch, size, size)
    sample = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1).expand(batch, size, size)
    return torch.stack([rows, cols, sample], dim=1)


def corner(patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of the top-left pixel of each (B, 3, p, p) patch cut from a coordinate image."""
    return patch[:, 0, 0, 0].long(), patch[:, 1, 0, 0].long()


def assert_contiguous_blocks(patches: torch.Tensor, batch_index: torch.Tensor) -> None:
    """Every patch is a solid block of the coordinate image of its own sample."""
    p = patches.shape[-1]
    r, c = corner(patches)
    steps = torch.arange(p, dtype=torch.float32)
    assert torch.equal(patches[:, 0], (r.float().view(-1, 1, 1) + steps.view(1, p, 1)).expand(-1, p, p))
    assert torch.equal(patches[:, 1], (c.float().view(-1, 1, 1) + steps.view(1, 1, p)).expand(-1, p, p))
    assert torch.equal(patches[:, 2], batch_index.float().view(-1, 1, 1).expand(-1, p, p))


# ----------------------------------------------------------------------------- rotation
def test_rotations_are_exact_index_flips():
    x = torch.rand(3, 2, 5, 5)
    rotated, labels = P.rotate_batch(x)
    assert rotated.shape == (12, 2, 5, 5)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    by_hand = [
        x,
        x.transpose(-2, -1).flip(-2),  # 90 ccw: out[i, j] = x[j, S-1-i]
        x.flip(-2).flip(-1),  # 180: out[i, j] = x[S-1-i, S-1-j]
        x.transpose(-2, -1).flip(-1),  # 270 ccw: out[i, j] = x[S-1-j, i]
    ]
    for k in range(4):
        assert torch.equal(rotated[3 * k : 3 * k + 3], by_hand[k])
    s = 5
    for i, j in [(0, 0), (1, 3), (4, 2)]:
        assert rotated[3, 0, i, j] == x[0, 0, j, s - 1 - i]
        assert rotated[6, 0, i, j] == x[0, 0, s - 1 - i, s - 1 - j]
        assert rotated[9, 0, i, j] == x[0, 0, s - 1 - j, i]


def test_rotation_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        P.rotate_batch(torch.rand(2, 3, 8, 6))


# ------------------------------------------------------------------------------ patches
def test_extract_patches_matches_slicing():
    x = torch.rand(4, 3, 12, 12)
    top = torch.randint(0, 8, (4, 5))
    left = torch.randint(0, 8, (4, 5))
    patches = P.extract_patches(x, top, left, 4)
    for b, n in itertools.product(range(4), range(5)):
        t, le = int(top[b, n]), int(left[b, n])
        assert torch.equal(patches[b, n], x[b, :, t : t + 4, le : le + 4])


@pytest.mark.parametrize("jitter", [0, 2])
def test_context_pairs_positions_labels_and_gap(jitter):
    size, p, gap, batch = 40, 8, 4, 512
    x = coordinate_image(batch, size)
    centre, neighbour, label = P.context_pairs(x, patch_size=p, gap=gap, jitter=jitter)
    assert centre.shape == neighbour.shape == (batch, 3, p, p) and label.shape == (batch,)
    assert set(label.tolist()) == set(range(8))  # every position is drawn
    assert_contiguous_blocks(centre, torch.arange(batch))
    assert_contiguous_blocks(neighbour, torch.arange(batch))
    (cr, cc), (nr, nc) = corner(centre), corner(neighbour)
    offsets = torch.tensor(P.NEIGHBOUR_OFFSETS)[label]  # (B, 2): the cell the label names
    pitch = p + gap
    for axis, (c_pos, n_pos) in enumerate([(cr, nr), (cc, nc)]):
        direction = offsets[:, axis]
        shift = n_pos - c_pos - direction * pitch  # jitter of the two patches only
        assert int(shift.abs().max()) <= 2 * jitter
        if jitter == 0:
            assert int(shift.abs().max()) == 0
        # patches in different rows (columns) never touch: at least gap - 2 * jitter pixels between them
        after, before = direction == 1, direction == -1
        assert bool((n_pos[after] - (c_pos[after] + p) >= gap - 2 * jitter).all())
        assert bool((c_pos[before] - (n_pos[before] + p) >= gap - 2 * jitter).all())
        same = direction == 0
        assert int((n_pos[same] - c_pos[same]).abs().max()) <= 2 * jitter
    # the grid's place varies from sample to sample (the footprint 3p + 2g + 2j < size)
    assert len(set(cr.tolist())) > 1
    if jitter:
        assert len(set((nr - cr - offsets[:, 0] * pitch).tolist())) > 1


def test_context_grid_too_large_names_the_fix():
    with pytest.raises(ValueError, match=r"spans 36 px.*augment.image_size to at least 36"):
        P.context_pairs(torch.rand(2, 3, 32, 32), patch_size=10, gap=2, jitter=1)


def test_context_geometry_fits_and_keeps_paper_proportions():
    for size in (16, 32, 64, 96, 224, 398):
        p, g, j = P.context_geometry(size)
        assert 3 * p + 2 * g + 2 * j <= size and p >= 1 and j >= 1
    assert P.context_geometry(398) == (96, 48, 7)


def test_color_drop_keeps_one_channel_and_scales_the_noise():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16) * 4
    y = P.color_drop(x, noise_ratio=0.01)
    unchanged = (y == x).flatten(2).all(2)  # (B, 3)
    assert unchanged.sum(1).tolist() == [1] * 64
    assert len(set(unchanged.float().argmax(1).tolist())) == 3  # the kept channel is random
    kept_std = x[unchanged].flatten(1).std(1)
    noise_std = y[~unchanged].view(64, 2, -1).std(2)
    assert torch.allclose(noise_std / kept_std[:, None], torch.full((64, 2), 0.01), rtol=0.2)


def test_color_project_removes_the_green_magenta_axis():
    x = torch.randn(4, 3, 5, 5)
    y = P.color_project(x)
    axis = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    assert (y * axis).sum(1).abs().max() < 1e-5
    gray = torch.rand(2, 1, 5, 5).expand(-1, 3, -1, -1)
    assert torch.allclose(P.color_project(gray), gray)  # gray is on no colour axis: untouched
    assert torch.allclose(P.color_project(y), y, atol=1e-6)  # a projection
    with pytest.raises(ValueError, match="3-channel"):
        P.color_project(torch.rand(2, 1, 4, 4))


# ------------------------------------------------------------------------------- jigsaw
@pytest.mark.parametrize("size", [30, 32])
def test_jigsaw_tiles_reassemble_when_the_permutation_is_inverted(size):
    x = torch.rand(6, 3, size, size)
    perms = P.hamming_permutations(24, num_tiles=9, cache=False)
    index = torch.randint(0, 24, (6,))
    tiles = P.jigsaw_tiles(x, grid=3, tile_size=10, jitter=False)
    shuffled = P.shuffle_tiles(tiles, perms, index)
    assert not torch.equal(shuffled, tiles)
    restored = P.shuffle_tiles(shuffled, perms.argsort(1), index)
    assert torch.equal(P.untile(restored, 3), x[..., :30, :30])


def test_shuffle_tiles_follows_the_permutation():
    tiles = torch.arange(2 * 9, dtype=torch.float32).view(2, 9, 1, 1, 1)
    perms = torch.stack([torch.arange(9), torch.arange(9).flip(0)])
    out = P.shuffle_tiles(tiles, perms, torch.tensor([1, 0]))
    assert out[0].flatten().tolist() == [8.0, 7, 6, 5, 4, 3, 2, 1, 0]
    assert out[1].flatten().tolist() == list(range(9, 18))


def test_jigsaw_jitter_keeps_each_tile_inside_its_cell():
    x = coordinate_image(256, 32)  # 10 px cells, 8 px tiles: 2 px of play per cell
    tiles = P.jigsaw_tiles(x, grid=3)
    assert tiles.shape == (256, 9, 3, 8, 8)
    flat = tiles.flatten(0, 1)
    assert_contiguous_blocks(flat, torch.arange(256).repeat_interleave(9))
    r, c = corner(flat)
    cell_r = torch.arange(3).repeat_interleave(3).repeat(256) * 10
    cell_c = torch.arange(3).repeat(3).repeat(256) * 10
    assert set((r - cell_r).tolist()) == {0, 1, 2} and set((c - cell_c).tolist()) == {0, 1, 2}
    centred = P.jigsaw_tiles(x, grid=3, jitter=False).flatten(0, 1)
    assert set((corner(centred)[0] - cell_r).tolist()) == {1}


def test_jigsaw_tile_size_is_checked():
    with pytest.raises(ValueError, match="cell size 10"):
        P.jigsaw_tiles(torch.rand(1, 3, 32, 32), tile_size=11)


def test_normalize_tiles_per_tile_and_channel():
    tiles = torch.rand(3, 9, 3, 8, 8) * (torch.rand(3, 9, 3, 1, 1) + 0.5) * 10 + torch.randn(3, 9, 3, 1, 1)
    out = P.normalize_tiles(tiles)
    assert out.mean((-2, -1)).abs().max() < 1e-4
    assert torch.allclose(out.std((-2, -1), unbiased=False), torch.ones(3, 9, 3), atol=1e-3)
    flat = P.normalize_tiles(torch.full((1, 9, 3, 4, 4), 0.7))
    assert flat.abs().max() < 1e-3  # a blank tile stays (about) zero, not inf/NaN


# ------------------------------------------------------------------------- permutations
def brute_force_min_distance(perms: np.ndarray) -> int:
    return min(int((a != b).sum()) for a, b in itertools.combinations(perms, 2))


@pytest.mark.parametrize("count, floor", [(100, 6), (1000, 5)])
def test_permutation_set_is_distinct_and_far_apart(count, floor):
    perms = P.hamming_permutations(count, 9, seed=0, cache=False)
    assert perms.shape == (count, 9) and perms.dtype == torch.long
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(count, 9))  # each row a permutation
    assert len({tuple(p) for p in perms.tolist()}) == count
    assert P.min_hamming_distance(perms) >= floor
    if count == 100:
        assert P.min_hamming_distance(perms) == brute_force_min_distance(perms.numpy())


def test_permutation_set_is_deterministic_and_seeded():
    a = P.hamming_permutations(50, 9, seed=3, cache=False)
    assert torch.equal(a, P.hamming_permutations(50, 9, seed=3, cache=False))
    assert not torch.equal(a, P.hamming_permutations(50, 9, seed=4, cache=False))
    paper = P.hamming_permutations(50, 9, seed=3, selection="maxavg", cache=False)
    assert len({tuple(p) for p in paper.tolist()}) == 50
    assert P.min_hamming_distance(a) >= P.min_hamming_distance(paper)  # max-min keeps the minimum higher


def test_permutation_set_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path))
    permutations._cached_permutations.cache_clear()
    try:
        perms = P.hamming_permutations(30, 9, seed=7)
        files = list((tmp_path / "permutations").glob("*.npy"))
        assert [f.name for f in files] == ["hamming-maxmin-30x9-seed7.npy"]
        assert np.array_equal(np.load(files[0]), perms.numpy())
        permutations._cached_permutations.cache_clear()
        np.save(files[0], np.zeros((30, 9), dtype=np.int8))  # a damaged file is rebuilt, not trusted
        assert torch.equal(P.hamming_permutations(30, 9, seed=7), perms)
    finally:
        permutations._cached_permutations.cache_clear()


def test_permutation_arguments_are_checked():
    with pytest.raises(ValueError, match=r"between 1 and 4! = 24"):
        P.hamming_permutations(25, num_tiles=4, cache=False)
    with pytest.raises(ValueError, match="num_tiles"):
        P.hamming_permutations(10, num_tiles=16, cache=False)
    with pytest.raises(ValueError, match="'maxmin' or 'maxavg'"):
        P.hamming_permutations(10, selection="best", cache=False)


# ------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", ["rotation", "context", "jigsaw", "deepcluster"])
def test_presets_make_one_normalised_view_from_uint8(name):
    images = torch.randint(0, 256, (4, 1, 36, 36), dtype=torch.uint8)
    views = vs.augment.create(name, image_size=32)(images)
    assert len(views) == 1 and views[0].shape == (4, 3, 32, 32) and views[0].dtype == torch.float32
    assert views[0].abs().max() < 5  # normalised, not 0..255
