"""InfoNCE against a queue of negatives, the loss of MoCo (He et al., 2020; Chen et al., 2020 for v2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_queue(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    filled: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCo's contrastive loss: each query against its own key and the K keys of the queue.

    For query q_i with positive key k_i and negatives n_1..n_K (the queue), the logits are
    [q_i . k_i, q_i . n_1, ..., q_i . n_K] / T and l_i = -log softmax(logits)[0], the positive
    sitting at index 0; the loss is the mean of l_i over the N queries.

    Normalisation: ``q`` and ``k`` are L2-normalised here (a no-op when they already are, as
    in MoCo, which normalises both in the model); ``queue`` must already hold L2-normalised
    rows and is used as given (re-normalising K rows at every step would be wasted work).

    Gradients: ``k`` and ``queue`` are detached here, so only ``q`` receives gradient
    (MoCo's key encoder is trained by momentum, never by back-propagation).

    Args:
        q: (N, D) queries (online encoder).
        k: (N, D) positive keys (momentum encoder); row i is the positive of query i.
        queue: (K, D) negative keys, L2-normalised.
        temperature: T > 0 (0.2 in MoCo v2, 0.07 in v1).
        filled: (K,) bool, which rows of ``queue`` hold keys, or (N, K), per query; the others are left out of
            the negatives (a queue that has not yet been filled holds no keys there). None: every row.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> q = F.normalize(torch.randn(4, 16), dim=1)
        >>> queue = F.normalize(torch.randn(32, 16), dim=1)
        >>> bool(infonce_queue(q, q, queue) < infonce_queue(q, -q, queue))
        True
        >>> first_half = torch.arange(32) < 16
        >>> bool(torch.isclose(infonce_queue(q, q, queue, filled=first_half), infonce_queue(q, q, queue[:16])))
        True
    """
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be (N, D); got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, D) with D = {q.shape[1]} like q; got {tuple(queue.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(q.device.type, enabled=False):  # logits in float32 even under bf16 autocast
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negatives = q @ queue.detach().float().T
        if filled is not None:  # a masked logit is -inf: it adds nothing to the softmax's sum
            negatives = negatives.masked_fill(~filled, float("-inf"))
        logits = torch.cat([positive, negatives], dim=1) / temperature
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, targets)
