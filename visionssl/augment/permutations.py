"""Jigsaw permutation sets: maximal-Hamming-distance selection (Noroozi & Favaro, 2016) and its disk cache.

Example:
    >>> perms = hamming_permutations(10, num_tiles=4, seed=0, cache=False)
    >>> perms.shape, min_hamming_distance(perms) >= 2
    (torch.Size([10, 4]), True)
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import numpy as np
import torch

from visionssl.files import atomic_write, visionssl_home


def hamming_permutations(
    num_permutations: int = 1000, num_tiles: int = 9, seed: int = 0, selection: str = "maxmin", cache: bool = True
) -> torch.Tensor:
    """A set of permutations of ``num_tiles`` tiles far apart in Hamming distance (Noroozi & Favaro).

    Greedy selection over all ``num_tiles!`` permutations, starting from a seeded random one; at
    each step the candidate added is (``selection``):
      - ``"maxmin"``: the one whose smallest distance to the chosen set is largest (the set's
        minimum distance, which is what makes the classes hard to confuse, stays high);
      - ``"maxavg"``: the one whose summed distance to the chosen set is largest (the paper's
        Algorithm 1; higher average, lower minimum distance).
    Ties are broken at random (seeded). Vectorised over the candidates with numpy: 1000 of the 9!
    permutations take about half a second. Sets are memoised and cached on disk under
    ``$VISIONSSL_HOME/permutations`` (default ``~/.cache/visionssl``); ``cache=False`` skips the disk.

    Returns:
        LongTensor (num_permutations, num_tiles), each row a permutation of ``0..num_tiles-1``.

    Example:
        >>> perms = hamming_permutations(100, cache=False)
        >>> perms.shape, min_hamming_distance(perms) >= 6
        (torch.Size([100, 9]), True)
    """
    if num_tiles < 2 or num_tiles > 10:
        raise ValueError(
            f"num_tiles must be between 2 and 10 (all num_tiles! candidates are enumerated), got {num_tiles}"
        )
    if not 1 <= num_permutations <= math.factorial(num_tiles):
        raise ValueError(
            f"num_permutations must be between 1 and {num_tiles}! = {math.factorial(num_tiles)}, got {num_permutations}"
        )
    if selection not in ("maxmin", "maxavg"):
        raise ValueError(f"selection must be 'maxmin' or 'maxavg', got {selection!r}")
    loader = _cached_permutations if cache else _select_permutations
    return torch.from_numpy(loader(num_permutations, num_tiles, seed, selection).astype(np.int64))


def min_hamming_distance(permutations: torch.Tensor) -> int:
    """The smallest number of positions in which two permutations of the set differ.

    Example:
        >>> min_hamming_distance(torch.tensor([[0, 1, 2], [1, 2, 0], [0, 2, 1]]))
        2
    """
    p = torch.as_tensor(permutations)
    if len(p) < 2:
        raise ValueError("need at least 2 permutations")
    dist = (p[:, None, :] != p[None, :, :]).sum(-1)
    dist.fill_diagonal_(p.shape[1] + 1)
    return int(dist.min())


@functools.lru_cache(maxsize=2)
def _all_permutations(num_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    candidates = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    candidates.setflags(write=False)
    columns = np.ascontiguousarray(candidates.T)
    columns.setflags(write=False)
    return candidates, columns


def _select_permutations(num: int, num_tiles: int, seed: int, selection: str) -> np.ndarray:
    candidates, columns = _all_permutations(num_tiles)
    rng = np.random.default_rng(seed)
    min_dist = np.full(len(candidates), num_tiles + 1, dtype=np.int16)
    sum_dist = np.zeros(len(candidates), dtype=np.int32)
    chosen = [int(rng.integers(len(candidates)))]
    for _ in range(num - 1):
        last = candidates[chosen[-1]]
        dist = np.zeros(len(candidates), dtype=np.int16)
        for position in range(num_tiles):
            dist += columns[position] != last[position]
        np.minimum(min_dist, dist, out=min_dist)
        if selection == "maxmin":
            score = min_dist
        else:
            sum_dist += dist
            score = np.where(min_dist > 0, sum_dist, -1)  # never pick one already chosen
        best = np.flatnonzero(score == score.max())
        chosen.append(int(best[rng.integers(len(best))]))
    return candidates[chosen]


@functools.lru_cache(maxsize=16)
def _cached_permutations(num: int, num_tiles: int, seed: int, selection: str) -> np.ndarray:
    path = visionssl_home() / "permutations" / f"hamming-{selection}-{num}x{num_tiles}-seed{seed}.npy"
    try:
        perms = np.load(path)
        if perms.shape == (num, num_tiles) and (np.sort(perms, 1) == np.arange(num_tiles)).all():
            return perms
    except (OSError, ValueError):
        pass  # missing or damaged: rebuilt below
    perms = _select_permutations(num, num_tiles, seed, selection)
    try:
        atomic_write(path, lambda f: np.save(f, perms))
    except OSError as exc:
        warnings.warn(f"could not cache the permutation set at {path}: {exc}", stacklevel=3)
    perms.setflags(write=False)
    return perms
