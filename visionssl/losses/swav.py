"""SwAV: swapped prediction of Sinkhorn-Knopp codes across crops (Caron et al., 2020, arXiv 2006.09882)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionssl import distributed


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, gather_distributed: bool = False
) -> torch.Tensor:
    """Soft codes (B, K) of prototype scores (B, K): an equipartition of the batch over the prototypes.

    Q = exp(scores / epsilon)^T (K x B) is scaled to sum 1, then ``iterations`` times its rows are
    made to sum 1/K and its columns 1/B; returned as B x Q^T, so each row (sample) sums to 1.
    With ``gather_distributed`` every sum runs over all ranks' samples (B is then the global batch).

    Example:
        >>> q = sinkhorn(torch.randn(8, 4))
        >>> q.shape, bool(torch.allclose(q.sum(1), torch.ones(8)))
        (torch.Size([8, 4]), True)
    """
    q = torch.exp(scores.float() / epsilon).T
    reduce = distributed.all_reduce if gather_distributed else (lambda t: t)
    q /= reduce(q.sum())
    k, b = q.shape
    b *= distributed.world_size() if gather_distributed else 1
    for _ in range(iterations):
        q /= reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def swav(
    scores: list[torch.Tensor],
    num_global: int = 2,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue_scores: list[torch.Tensor] | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """SwAV's swapped-prediction loss over the prototype scores of every crop.

    For each of the first ``num_global`` crops i, codes q_i = ``sinkhorn`` of its scores (no gradient;
    with ``queue_scores[i]``, the scores of queued embeddings of crop i, appended before Sinkhorn and
    dropped after). Every other crop v predicts them: l(i, v) = -mean_b sum_k q_ibk log softmax(s_vb / T)_k.
    The loss is mean_i mean_{v != i} l(i, v).

    Args:
        scores: one (B, K) tensor per crop, global crops first: z_v . c_k for normalised z and prototypes.
        num_global: how many leading crops make codes (SwAV: the 2 global crops).
        temperature: T of the predictions' softmax.
        epsilon, iterations: Sinkhorn's regularisation and number of iterations.
        queue_scores: per global crop, (Q, K) scores of queued embeddings, or None.
        gather_distributed: Sinkhorn's sums over every rank's samples.

    Example:
        >>> import torch
        >>> s = [torch.randn(8, 5) for _ in range(4)]
        >>> float(swav(s)) > 0
        True
    """
    if not 1 <= num_global <= len(scores) or len(scores) < 2:
        raise ValueError(
            f"SwAV needs at least 2 crops and 1 <= num_global <= crops; got {len(scores)} crops, "
            f"num_global={num_global}"
        )
    total = scores[0].new_zeros((), dtype=torch.float32)
    for i in range(num_global):
        s = scores[i].detach()
        if queue_scores is not None:
            s = torch.cat([s, queue_scores[i].detach()])
        q = sinkhorn(s, epsilon, iterations, gather_distributed)[: len(scores[i])]
        sub = sum(
            -(q * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(1).mean()
            for v in range(len(scores))
            if v != i
        )
        total = total + sub / (len(scores) - 1)
    return total / num_global
