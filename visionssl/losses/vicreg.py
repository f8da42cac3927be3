"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun, 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg's loss, as defined by the reference code (facebookresearch/vicreg, ``main_vicreg.py``).

    With N embeddings of D dimensions per branch:

    - invariance s = mean squared error between z1 and z2 (averaged over N x D entries);
    - variance v = mean_j relu(1 - S(z1)_j) / 2 + mean_j relu(1 - S(z2)_j) / 2, where
      S(z)_j = sqrt(Var(z_.j) + eps), the unbiased variance over the batch;
    - covariance c = sum_{j != k} C(z1)_jk^2 / D + sum_{j != k} C(z2)_jk^2 / D, where
      C(z) = (z - mean z)^T (z - mean z) / (N - 1);

    and the loss is ``sim_weight * s + var_weight * v + cov_weight * c``. It is computed in
    float32 (autocast off): the covariance of a wide expander is unreliable in bf16.

    Args:
        z1, z2: (N, D) expander outputs of the two views, N >= 2.
        sim_weight, var_weight, cov_weight: lambda, mu, nu of the paper (25, 25, 1).
        eps: added to the variance before the square root.
        return_terms: also return ``{"invariance", "variance", "covariance"}``, the unweighted
            terms (0-d tensors attached to the graph; detach them to log).

    Example:
        >>> import torch
        >>> z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
        >>> loss, terms = vicreg(z1, z2, return_terms=True)
        >>> sorted(terms)
        ['covariance', 'invariance', 'variance']
        >>> bool(torch.isclose(loss, 25 * terms["invariance"] + 25 * terms["variance"] + terms["covariance"]))
        True
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"VICReg needs at least 2 samples per batch for the variance, got N = {z1.shape[0]}")
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        variance = _std_hinge(z1, eps) / 2 + _std_hinge(z2, eps) / 2
        covariance = _off_diagonal_cov_penalty(z1) + _off_diagonal_cov_penalty(z2)
        total = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    if return_terms:
        return total, {"invariance": invariance, "variance": variance, "covariance": covariance}
    return total


def _std_hinge(z: torch.Tensor, eps: float) -> torch.Tensor:
    """mean_j relu(1 - sqrt(Var_batch(z_.j) + eps)), unbiased variance."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _off_diagonal_cov_penalty(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of the batch covariance, divided by D."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return cov.fill_diagonal_(0.0).pow(2).sum() / d
