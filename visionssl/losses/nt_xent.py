"""NT-Xent, the normalized temperature-scaled cross entropy of SimCLR (Chen et al., 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's loss over the 2N embeddings of a batch of N positive pairs.

    With z = normalize([z1; z2]) and s_ij = z_i . z_j / T, anchor i with positive p(i) costs
    l_i = -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) ); the loss is the mean of l_i over all
    2N anchors (each view of each image is an anchor once).

    Args:
        z1, z2: (N, D) projections of the two views; row i of each comes from the same image.
        temperature: T > 0.

    Example:
        >>> import torch
        >>> z = torch.randn(8, 128)
        >>> loss = nt_xent(z, z + 0.01 * torch.randn(8, 128), temperature=0.5)
        >>> bool(loss < nt_xent(z, torch.randn(8, 128)))
        True
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # an anchor is never its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)
