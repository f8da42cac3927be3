"""Collapse monitoring: two cheap statistics of a batch of embeddings, logged during training.

A collapsed representation maps every image to (nearly) the same vector, or to a low-dimensional
subspace; both statistics fall when that happens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the batch of the L2-normalised embeddings, averaged over dimensions.

    About 1/sqrt(D) when the embeddings spread over the sphere; 0 when they all coincide
    (complete collapse). Unbiased std over the N rows (N >= 2). Returns a 0-d float32 tensor.

    Example:
        >>> import torch
        >>> z = torch.randn(4096, 64)
        >>> round(float(embedding_std(z)) * 64 ** 0.5, 1)
        1.0
        >>> float(embedding_std(torch.ones(8, 64)))
        0.0
    """
    _check(z)
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """Effective rank of the (N, D) batch (Roy & Vetterli, 2007): exp(-sum_k p_k log p_k) with
    p_k = sigma_k / sum_j sigma_j over the singular values sigma of ``z`` (not centred).

    Between 1 (rank one, e.g. every row equal) and min(N, D) (all singular values equal).
    A zero matrix gives 1. Returns a 0-d float32 tensor.

    Example:
        >>> import torch
        >>> float(effective_rank(torch.eye(16)))
        16.0
        >>> round(float(effective_rank(torch.randn(8, 1) @ torch.randn(1, 32))), 4)
        1.0
    """
    _check(z)
    sigma = torch.linalg.svdvals(z.detach().float())
    p = sigma / sigma.sum().clamp_min(torch.finfo(sigma.dtype).tiny)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def _check(z: torch.Tensor) -> None:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"expected a (N, D) batch of embeddings with N >= 2, got shape {tuple(z.shape)}")
