"""MoCo v2 (He et al., 2020, arXiv 1911.05722; Chen et al., 2020, arXiv 2003.04297): a momentum key
encoder and a queue of negative keys."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionssl import distributed
from visionssl.losses import infonce_queue
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, TrainingContext
from visionssl.methods.momentum import MomentumTarget, legacy_target_keys


def _full_queue_of_older_checkpoints(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A checkpoint written before ``queue_filled`` existed resumes with every row counted as a key, as it ran."""
    if f"{prefix}queue" in state_dict and f"{prefix}queue_filled" not in state_dict:
        state_dict[f"{prefix}queue_filled"] = torch.ones(state_dict[f"{prefix}queue"].shape[0], dtype=torch.bool)


@register_method("moco")
class MoCo(SSLMethod):
    """MoCo v2 with the paper's defaults: MLP head (2048 hidden, 128 out, no BatchNorm), T = 0.2,
    K = 65,536 queued keys, key-encoder momentum 0.999.

    The query encoder (backbone + head) sees view 1; the key encoder, an EMA copy of it that takes
    no gradient, sees view 2. Both outputs are L2-normalised; the loss is ``infonce_queue`` of the
    queries against their keys and the queue. After the loss is computed (in training mode only)
    the keys replace the oldest entries of the queue: a FIFO ring buffer with a wrapping pointer
    (``queue_ptr``), so any batch size works, whether or not it divides K. The queue starts as
    random unit vectors, as in the paper. The key encoder is ``self.target`` (a ``MomentumTarget``:
    ``target.backbone``, ``target.projector``); its EMA update happens in ``on_step_end``, after each
    optimizer step.

    Data-parallel training (torchrun): the queue receives the keys of every rank, gathered in rank
    order, so it holds the same keys in the same order as one process training on the global batch
    (``optim.batch_size``); each rank's queries meet their own keys. Shuffle-BN (the paper's fix for
    BatchNorm leaking information between a query and its key through the batch statistics): the
    key encoder sees the global batch in a random order spread over the ranks, and the keys are put
    back in order afterwards. ``train.sync_bn=true`` is the other fix (statistics over the global
    batch). On one process neither applies: the key encoder's BatchNorm simply uses the key batch.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        proj_hidden_dim: width of the head's hidden layer.
        proj_dim: output size of the head (the size of queries, keys and queued keys).
        queue_size: K, the number of negative keys; keep it well below the training-set size, or
            the queue holds stale keys of the very images being queried.
        temperature: T of the InfoNCE loss.
        momentum: EMA momentum of the key encoder.
        final_momentum: None keeps ``momentum`` constant (the paper); a value raises it to that
            value along BYOL's cosine schedule (the solo-learn CIFAR recipe: 0.99 -> 0.999).
        symmetric: False: view 1 queries, view 2 keys (MoCo v2). True: both views query the other's
            key and the two losses are averaged (MoCo v3 / solo-learn style); the queue still
            receives the keys of view 2 only, so it holds K distinct images.
        shuffle_bn: under several processes, shuffle the key batch across the ranks (see above).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("moco", backbone="resnet10t_cifar", queue_size=64)
        >>> out = m([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
        >>> out["loss"].backward(); m.on_step_end(1, 100)
        >>> int(m.queue_ptr), tuple(out["embedding"].shape)
        (4, (4, 512))
    """

    augmentation = "moco"
    num_views = 2

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
        final_momentum: float | None = None,
        symmetric: bool = False,
        shuffle_bn: bool = True,
    ):
        super().__init__(backbone, backbone_kwargs)
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.shuffle_bn = shuffle_bn
        # MoCo v2's head: fc-ReLU-fc, without BatchNorm
        self.projector = nn.Sequential(
            nn.Linear(self.num_features, proj_hidden_dim), nn.ReLU(inplace=True), nn.Linear(proj_hidden_dim, proj_dim)
        )
        self.target = MomentumTarget(momentum, final_momentum, backbone=self.backbone, projector=self.projector)
        self.register_load_state_dict_pre_hook(legacy_target_keys("momentum_"))
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # rows written with keys so far: the random rows the queue starts from are not keys, and as negatives they
        # rewarded collapse (in a 150-step run every projection fell onto one direction and the loss sat at ln K)
        self.register_buffer("queue_filled", torch.zeros(queue_size, dtype=torch.bool))
        self.register_load_state_dict_pre_hook(_full_queue_of_older_checkpoints)

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"MoCo takes 2 views, got {len(views)}")
        x1, x2 = views
        h1 = self.backbone(x1)
        q1 = F.normalize(self.projector(h1), dim=1)
        with torch.no_grad():
            keys2 = self._keys(x2)  # the keys of every rank's images, in rank order
        queue = self.queue.clone()  # the in-place enqueue below must not touch what backward needs
        filled = self.queue_filled.clone()
        if self.symmetric:
            q2 = F.normalize(self.projector(self.backbone(x2)), dim=1)
            with torch.no_grad():
                keys1 = self._keys(x1)
            loss = (self._contrast(q1, keys2, queue, filled) + self._contrast(q2, keys1, queue, filled)) / 2
        else:
            loss = self._contrast(q1, keys2, queue, filled)
        if self.training:
            self.enqueue(keys2)
        return {"loss": loss, "embedding": h1.detach()}

    def _contrast(self, q: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """InfoNCE of this rank's queries ``q`` against their keys (in ``keys``, every rank's, in rank order) and
        the queue's keys; while the queue holds none (the first step), against the other keys of the global batch
        instead. The switch is a device flag: no host sync."""
        k = distributed.local_slice(keys)
        own = torch.arange(len(k), device=k.device) + len(k) * distributed.rank()  # each query's key in ``keys``
        others = (torch.arange(len(keys), device=k.device) != own[:, None]) & ~filled.any()
        mask = torch.cat([filled.expand(len(q), -1), others], dim=1)
        return infonce_queue(q, k, torch.cat([queue, keys.detach().to(queue.dtype)]), self.temperature, mask)

    @staticmethod
    def check_config(hparams: dict[str, Any], config: Any) -> None:
        """Called by ``visionssl.engine.config.validate`` before any work starts: the queue must hold a batch."""
        queue, batch = hparams["queue_size"], config.optim.batch_size
        if queue < batch:
            raise ValueError(
                f"method.queue_size={queue} is smaller than optim.batch_size={batch}: MoCo's queue must hold at "
                f"least one batch of keys (the paper: 65536 keys for batches of 256)"
            )

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys of every rank's ``x`` (the global batch, in rank order; ``x``'s own on one process)."""
        if self.shuffle_bn and distributed.world_size() > 1:
            x_all = distributed.all_gather_no_grad(x)
            order = distributed.broadcast(torch.randperm(len(x_all), device=x.device))  # rank 0's shuffle
            keys = distributed.all_gather_no_grad(self._encode_keys(distributed.local_slice(x_all[order])))
            return torch.empty_like(keys).index_copy_(0, order, keys)  # keys[j] belongs to image order[j]
        return distributed.all_gather_no_grad(self._encode_keys(x))

    def _encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.target.projector(self.target.backbone(x)), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes ``keys`` (N, D) over the oldest entries of the queue and advances the pointer.

        Indices wrap modulo K, so a write that runs past the end continues at the start; a batch
        larger than the queue keeps its last K keys. No host synchronisation.
        """
        size = self.queue.shape[0]
        keys = keys.detach()[-size:].to(self.queue.dtype)
        index = (self.queue_ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue.index_copy_(0, index, keys)
        self.queue_filled.index_fill_(0, index, True)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def on_train_start(self, trainer: TrainingContext) -> None:
        train_set = trainer.train_set
        if train_set is not None and self.queue.shape[0] >= len(train_set):
            warnings.warn(
                f"MoCo queue_size={self.queue.shape[0]} is not smaller than the training set ({len(train_set)} "
                "images): the queue will hold stale keys of the images being queried as negatives; "
                "use a smaller method.queue_size",
                stacklevel=2,
            )

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.target.update(self, step, total_steps)
