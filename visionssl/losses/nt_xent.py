"""NT-Xent, the normalized temperature-scaled cross entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionssl import distributed


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather_distributed: bool = False
) -> torch.Tensor:
    """SimCLR's loss over the 2N embeddings of a batch of N positive pairs.

    With z = normalize([z1; z2]) and s_ij = z_i . z_j / T, anchor i with positive p(i) costs
    l_i = -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) ); the loss is the mean of l_i over all
    2N anchors (each view of each image is an anchor once).

    Data-parallel training: with ``gather_distributed`` the negatives are the embeddings of ALL ranks
    (gathered with ``visionssl.distributed.all_gather_with_grad``, so gradients flow back to the rank
    that made them); each rank's 2N embeddings are the anchors, with their positives at this rank's
    offset in the gathered batch. The mean of the ranks' losses is then the loss of the global batch,
    and DDP's averaged gradients are those of one process on the global batch. A no-op on one process.

    Args:
        z1, z2: (N, D) projections of the two views; row i of each comes from the same image.
        temperature: T > 0.
        gather_distributed: contrast against the embeddings of every rank (see above).

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
    with torch.autocast(z1.device.type, enabled=False):  # logits in float32 even under bf16 autocast
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        candidates, offset = z, 0
        if gather_distributed:  # every rank's [z1; z2] block, in rank order; ours starts at `offset`
            candidates, offset = distributed.all_gather_with_grad(z), distributed.rank() * 2 * n
        logits = z @ candidates.T / temperature
        anchors = torch.arange(2 * n, device=z.device)
        logits[anchors, anchors + offset] = float("-inf")  # an anchor is never its own negative
        targets = torch.cat([anchors[n:], anchors[:n]]) + offset
        return F.cross_entropy(logits, targets)
