"""The non-parametric instance classifier of Wu et al. (2018, arXiv 1805.01978) and its memory bank."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_softmax(z: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Cross entropy of each embedding against every image's memory: image i is class i.

    The logits of embedding z_n are ``bank @ z_n / T`` over all N rows of the bank and the target is the
    row of its own image, ``indices[n]``: the exact softmax of instance discrimination (no NCE sampling,
    affordable up to a few million rows). ``z`` is L2-normalised here; ``bank`` must hold L2-normalised
    rows and is detached (it is updated by ``update_memory_bank``, never by back-propagation).

    Args:
        z: (B, D) embeddings of the batch.
        bank: (N, D) L2-normalised memory of every training image.
        indices: (B,) dataset indices of the batch, in [0, N).
        temperature: T > 0 (0.07 in Wu et al.).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> bank = F.normalize(torch.randn(10, 8), dim=1)
        >>> idx = torch.tensor([3, 7])
        >>> bool(instance_softmax(bank[idx], bank, idx) < instance_softmax(bank[idx], bank, idx.flip(0)))
        True
    """
    if z.ndim != 2 or bank.ndim != 2 or z.shape[1] != bank.shape[1]:
        raise ValueError(f"z must be (B, D) and bank (N, D) with the same D; got {tuple(z.shape)} and {tuple(bank.shape)}")
    if indices.shape != (z.shape[0],):
        raise ValueError(f"indices must be (B,) = ({z.shape[0]},), got {tuple(indices.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(z.device.type, enabled=False):  # logits in float32 even under bf16 autocast
        logits = F.normalize(z.float(), dim=1) @ bank.detach().float().T / temperature
        return F.cross_entropy(logits, indices)


@torch.no_grad()
def update_memory_bank(bank: torch.Tensor, indices: torch.Tensor, z: torch.Tensor, momentum: float = 0.5) -> None:
    """In place: ``bank[i] = normalize(momentum * bank[i] + (1 - momentum) * normalize(z))`` for the batch's rows.

    A row whose ``z`` is not finite (a step the trainer skips for a NaN) keeps its old value.

    Example:
        >>> import torch
        >>> bank = torch.eye(3)
        >>> update_memory_bank(bank, torch.tensor([0]), torch.tensor([[0.0, 1.0, 0.0]]), momentum=0.5)
        >>> bank[0].tolist()  # halfway between e0 and e1, on the unit sphere
        [0.7071067690849304, 0.7071067690849304, 0.0]
    """
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    old = bank[indices].float()
    mixed = F.normalize(momentum * old + (1 - momentum) * F.normalize(z.detach().float(), dim=1), dim=1)
    bank[indices] = torch.where(torch.isfinite(z).all(1, keepdim=True), mixed, old).to(bank.dtype)
