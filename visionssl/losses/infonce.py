"""InfoNCE with in-batch keys, the loss of MoCo v3 (Chen, Xie & He, 2021, arXiv 2104.02057)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionssl import distributed


def infonce(
    q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, gather_distributed: bool = False
) -> torch.Tensor:
    """MoCo v3's contrastive loss: query i against every key of the batch, its own key k_i positive.

    With q and k L2-normalised, logits_ij = q_i . k_j / T and the loss is
    ``2 T * mean_i -log softmax(logits_i)[i]`` (the reference code's ``2 * tau`` factor, which keeps the
    gradient scale independent of T). Keys take no gradient (a momentum encoder makes them).

    Data-parallel training: with ``gather_distributed`` the keys are those of every rank (gathered
    without gradient, in rank order) and query i of this rank has its key at ``rank * N + i``; the
    mean of the ranks' losses is the loss of the global batch. A no-op on one process.

    Args:
        q: (N, D) queries (predictor outputs).
        k: (N, D) keys of the same images (momentum encoder outputs of the other view).
        temperature: T > 0.
        gather_distributed: contrast against the keys of every rank (see above).

    Example:
        >>> import torch
        >>> k = torch.randn(8, 16)
        >>> bool(infonce(k + 0.01 * torch.randn(8, 16), k) < infonce(torch.randn(8, 16), k))
        True
    """
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be (N, D); got {tuple(q.shape)} and {tuple(k.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.detach().float(), dim=1)
    offset = 0
    if gather_distributed:
        k, offset = distributed.all_gather_no_grad(k), distributed.rank() * q.shape[0]
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return 2 * temperature * F.cross_entropy(logits, labels)
