"""DINO: self-distillation with no labels (Caron et al., 2021, arXiv 2104.14294)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionssl import distributed


def dino(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO's cross-entropy between the centred, sharpened teacher and the student, over crop pairs.

    P_t(i) = softmax((teacher_i - center) / teacher_temp) (no gradient) for the global crops i;
    log P_s(v) = log_softmax(student_v / student_temp) for every crop v, the global crops first (in
    the teacher's order). loss = mean over the pairs (i, v) with v != i of mean_b -sum_k P_t(i)_bk log P_s(v)_bk.

    Args:
        student: one (B, K) head output per crop, global crops first.
        teacher: one (B, K) teacher head output per global crop.
        center: (K,) or (1, K) running center of the teacher outputs (see ``dino_center``).
        student_temp, teacher_temp: the temperatures (teacher_temp < student_temp sharpens).

    Example:
        >>> import torch
        >>> t = [torch.randn(4, 16) for _ in range(2)]
        >>> s = [x + 0.1 * torch.randn(4, 16) for x in t] + [torch.randn(4, 16)]
        >>> float(dino(s, t, torch.zeros(16))) > 0
        True
    """
    if len(teacher) < 1 or len(student) < 2 or len(student) < len(teacher):
        raise ValueError(
            f"DINO needs >= 2 student crops including the {len(teacher)} teacher (global) crop(s); "
            f"got {len(student)} student crop(s)"
        )
    dtype = torch.promote_types(student[0].dtype, torch.float32)  # float32, or float64 when given
    with torch.autocast(center.device.type, enabled=False):
        targets = [F.softmax((t.detach().to(dtype) - center) / teacher_temp, dim=-1) for t in teacher]
        log_probs = [F.log_softmax(s.to(dtype) / student_temp, dim=-1) for s in student]
        total, terms = 0.0, 0
        for i, p in enumerate(targets):
            for v, log_q in enumerate(log_probs):
                if v != i:
                    total = total + (-(p * log_q).sum(-1)).mean()
                    terms += 1
        return total / terms


@torch.no_grad()
def dino_center(
    center: torch.Tensor, teacher: list[torch.Tensor], momentum: float = 0.9, gather_distributed: bool = False
) -> torch.Tensor:
    """The next center: ``momentum * center + (1 - momentum) * mean of the teacher outputs`` (all crops,
    and with ``gather_distributed`` all ranks' samples, summed with an all-reduce).

    Example:
        >>> dino_center(torch.zeros(2), [torch.tensor([[2.0, 4.0]])], momentum=0.5).tolist()
        [1.0, 2.0]
    """
    outputs = torch.cat([t.detach().to(torch.promote_types(t.dtype, torch.float32)) for t in teacher])
    total = outputs.sum(0)
    count = outputs.shape[0]
    if gather_distributed:
        distributed.all_reduce(total)
        count *= distributed.world_size()
    return center * momentum + total / count * (1 - momentum)
