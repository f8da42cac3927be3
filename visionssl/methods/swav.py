"""SwAV (Caron et al., 2020, arXiv 2006.09882): online clustering onto prototypes, codes swapped
between multi-crop views."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visionssl import distributed
from visionssl.losses import swav
from visionssl.methods import register_method
from visionssl.methods.base import check_view_size, mlp
from visionssl.methods.epoch_schedule import EpochScheduledMethod, scale_grad


def encode_crops(backbone: nn.Module, views: list[torch.Tensor], method: str = "multi-crop") -> torch.Tensor:
    """``backbone`` features of every view, concatenated in view order (V * B, D): one forward pass per run of
    consecutive views of one size (the reference code's grouping: crops of different sizes cannot share a CNN
    batch before pooling), so the head can then run once on all crops, as in the official SwAV and DINO.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> encode_crops(net, [torch.randn(2, 3, 8, 8)] * 2 + [torch.randn(2, 3, 4, 4)]).shape
        torch.Size([6, 3])
    """
    feats, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        check_view_size(backbone, views[start], method)
        feats.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(feats)


@register_method("swav")
class SwAV(EpochScheduledMethod):
    """SwAV with the paper's defaults: projector 2048 hidden / 128 out, 3000 prototypes, T = 0.1,
    Sinkhorn epsilon 0.05 with 3 iterations, prototypes frozen during the first epoch.

    Views: 2 global crops first, then any number of local crops (the ``multicrop`` preset). The backbone
    runs once per crop size; the projector runs once on the features of all crops concatenated (its
    BatchNorm sees every crop, as the official ``main_swav.py``), then L2 normalisation; the prototypes (rows of ``prototypes.weight``) are
    re-normalised before each training forward pass. Codes come from the global crops only.

    Queue: with ``queue_size > 0``, from epoch ``queue_start_epoch`` on, each global crop keeps the
    embeddings of the last batches; once full, their scores join the batch's in Sinkhorn (for small
    batches; the paper: 3840 embeddings from epoch 15 at batch 256). Under several processes each rank
    keeps ``queue_size // world_size`` of them and Sinkhorn sums over all ranks.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_hidden_dim, proj_dim: projector widths (hidden, output).
        num_prototypes: K, the number of prototypes.
        temperature: T of the predictions.
        epsilon, sinkhorn_iterations: Sinkhorn's regularisation and iteration count.
        queue_size: embeddings queued per global crop (0: no queue).
        queue_start_epoch: the epoch from which the queue fills.
        freeze_prototypes_epochs: epochs during which the prototypes take no gradient.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("swav", backbone="resnet10t_cifar", proj_hidden_dim=32, num_prototypes=10)
        >>> out = m([torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2); out["loss"].backward()
        >>> m.prototypes.weight.grad.abs().max().item()  # frozen during the first epoch
        0.0
    """

    augmentation = "multicrop"
    num_views = 8
    multi_size_views = True

    hparam_ranges: ClassVar[dict] = {"queue_size": (0, None, True)}  # 0: no queue

    queue: torch.Tensor

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_size: int = 0,
        queue_start_epoch: float = 15,
        freeze_prototypes_epochs: float = 1,
    ):
        super().__init__(backbone, backbone_kwargs)
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations
        self.queue_start_epoch, self.freeze_prototypes_epochs = queue_start_epoch, freeze_prototypes_epochs
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(2, queue_size, proj_dim))
        self._queued: int | None = None  # rows filled, known on the host (read from the buffer once after a resume)

    @staticmethod
    def check_config(hparams: dict[str, Any], config: Any) -> None:
        """Warns when there are more prototypes than embeddings for Sinkhorn to spread over them."""
        seen = config.optim.batch_size + hparams["queue_size"]
        if hparams["num_prototypes"] > seen:
            warnings.warn(
                f"swav: method.num_prototypes={hparams['num_prototypes']} is more than the {seen} embeddings "
                f"Sinkhorn shares out per step (optim.batch_size + method.queue_size): equal-partition codes "
                f"are then near-uniform and training can stall at loss ln(K); use fewer prototypes (the paper: 3000 "
                f"for 4096) or a longer queue",
                stacklevel=2,
            )

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError(f"SwAV takes 2 global crops of one size and then local crops, got {len(views)} view(s)")
        if self.training:
            with torch.no_grad():
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        feats = encode_crops(self.backbone, views, "SwAV")
        z = list(F.normalize(self.projector(feats), dim=1).split([len(v) for v in views]))
        frozen = self.training and self.epoch < self.freeze_prototypes_epochs
        prototypes = scale_grad(self.prototypes.weight, 0.0 if frozen else 1.0)
        scores = [zv @ prototypes.T for zv in z]
        queue_scores = None
        if self.training and self.queue.shape[1] and self.epoch >= self.queue_start_epoch:
            queue = self._local_queue()
            if self._queue_full(queue):
                queue_scores = [queue[i] @ prototypes.detach().T for i in range(2)]
            self._enqueue(queue, z[:2])
        loss = swav(
            scores, 2, self.temperature, self.epsilon, self.sinkhorn_iterations, queue_scores, gather_distributed=True
        )
        return {"loss": loss, "embedding": feats[: len(views[0])].detach()}

    def _local_queue(self) -> torch.Tensor:
        return self.queue[:, : self.queue.shape[1] // distributed.world_size()]

    def _queue_full(self, queue: torch.Tensor) -> bool:
        if self._queued is None:  # one host sync, at the first use after construction or a resume
            self._queued = queue.shape[1] if bool(queue[:, -1].any()) else 0
        return self._queued >= queue.shape[1]

    @torch.no_grad()
    def _enqueue(self, queue: torch.Tensor, z: list[torch.Tensor]) -> None:
        """Newest first: shift the queue down by the batch and write the batch at the top."""
        b = min(len(z[0]), queue.shape[1])
        for i in range(2):
            if b < queue.shape[1]:
                queue[i, b:] = queue[i, :-b].clone()
            queue[i, :b] = z[i][:b].detach().to(queue.dtype)
        self._queued = min(queue.shape[1], (self._queued or 0) + b)
