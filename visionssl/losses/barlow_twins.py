"""Barlow Twins: redundancy reduction of a cross-correlation matrix (Zbontar et al., 2021, arXiv 2103.03230)."""

from __future__ import annotations

import torch


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' loss of two (N, D) projector outputs.

    Each embedding dimension is normalised along the batch (zero mean, unit biased variance, as the
    reference code's ``BatchNorm1d(affine=False)``), C = z1n^T z2n / N is the (D, D) cross-correlation,
    and the loss is ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``. Computed in float32 (or float64).
    Data-parallel training: pass the embeddings of the global batch (``all_gather_with_grad``).

    Args:
        z1, z2: (N, D) projections of the two views, N >= 2.
        lambd: weight of the redundancy-reduction term (the paper's 0.0051).
        eps: added to the variance before the square root.

    Example:
        >>> import torch
        >>> z = torch.randn(64, 8)
        >>> bool(barlow_twins(z, z) < barlow_twins(z, torch.randn(64, 8)))
        True
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"Barlow Twins needs at least 2 samples per batch to normalise, got N = {z1.shape[0]}")
    with torch.autocast(z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)  # float32, or float64 when given
        z1n, z2n = _batch_normalize(z1.to(dtype), eps), _batch_normalize(z2.to(dtype), eps)
        c = z1n.T @ z2n / z1.shape[0]
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diag + lambd * off_diag


def _batch_normalize(z: torch.Tensor, eps: float) -> torch.Tensor:
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)
