"""Negative cosine similarity with a stop-gradient, the loss of SimSiam (Chen & He, 2021) and BYOL."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean_i (p_i / ||p_i||) . (z_i / ||z_i||), with the stop-gradient on z.

    ``z`` is detached here (SimSiam's ``stopgrad(z)``, BYOL's target): only ``p`` receives
    gradient. The value lies in [-1, 1]; -1 when every p_i points along z_i. BYOL's
    regression loss ||p/||p|| - z/||z||||^2 equals 2 + 2 * D(p, z) per pair.

    Args:
        p: (N, D) predictions (online branch).
        z: (N, D) targets; row i is the target of prediction i.

    Example:
        >>> import torch
        >>> p = torch.randn(4, 8)
        >>> round(float(negative_cosine(p, 3 * p)), 5), round(float(negative_cosine(p, -p)), 5)
        (-1.0, 1.0)
    """
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(f"p and z must both be (N, D); got {tuple(p.shape)} and {tuple(z.shape)}")
    with torch.autocast(p.device.type, enabled=False):
        p = F.normalize(p.float(), dim=1)
        z = F.normalize(z.detach().float(), dim=1)
        return -(p * z).sum(dim=1).mean()
