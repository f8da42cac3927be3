"""Rotation prediction (Gidaris et al., 2018, arXiv 1803.07728): which of 0/90/180/270 degrees?

With ``instance_dim > 0``, also the rotation feature decoupling of Feng et al. (2019, CVPR,
"Self-Supervised Representation Learning by Rotation Feature Decoupling").
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionssl import distributed
from visionssl.augment.pretext import rotate_batch
from visionssl.losses.memory_bank import instance_softmax, update_memory_bank
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp


@register_method("rotation")
class RotationPrediction(SSLMethod):
    """RotNet: every image of the batch is rotated by 0, 90, 180 and 270 degrees on the device (4B
    images in one backbone pass, as the paper found best) and a 4-way classifier on the backbone's
    features predicts the rotation; the loss is the cross entropy averaged over the 4B images.

    Rotation feature decoupling (``instance_dim > 0``, off by default). When a rotation cannot be
    told from the image (symmetric objects, aligned solar cells: 0 and 180 degrees look alike), the
    rotation loss stops teaching anything. Feng et al. add a rotation-irrelevant embedding beside the
    rotation classifier: a linear ``instance_head`` maps the features of the 4 rotated copies to
    ``instance_dim`` (L2-normalised), an invariance loss pulls the 4 copies to their mean, and the
    mean is classified among all training images against a memory bank (Wu et al.'s non-parametric
    instance discrimination, ``instance_softmax``; ``on_step_end`` writes the batch into the bank with
    ``bank_momentum``, after the backward pass). Loss:
    ``CE_rotation + invariance_weight * L_invariance + instance_weight * L_instance``. Their
    positive-unlabelled reweighting of ambiguous images is not implemented.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        head_layers: 1 for a linear classifier on the features, 2+ for an MLP.
        head_hidden_dim: hidden width of the MLP classifier (``head_layers >= 2``).
        instance_dim: width of the rotation-irrelevant embedding (Feng et al.: 128); 0 turns decoupling off.
        instance_weight: weight of the instance-discrimination loss.
        invariance_weight: weight of the loss pulling the 4 rotations' embeddings to their mean.
        instance_temperature: temperature of the instance softmax (0.07).
        bank_momentum: the memory bank keeps this share of its old row at each update (0.5).

    Returns (forward): ``loss``, ``embedding`` (features of the unrotated images, detached) and
    ``rotation/accuracy`` (rotation accuracy of the batch, 0-d); with decoupling also
    ``rotation/instance_loss`` and ``rotation/invariance_loss``.

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("rotation", backbone="resnet10t_cifar")
        >>> out = m([torch.randn(2, 3, 16, 16)])
        >>> sorted(out), out["embedding"].shape
        (['embedding', 'loss', 'rotation/accuracy'], torch.Size([2, 512]))
        >>> m = vs.create_method("rotation", backbone="resnet10t_cifar", instance_dim=16)
        >>> m.init_memory_bank(10)  # the trainer does this with its training set's size
        >>> out = m([torch.randn(2, 3, 16, 16)], indices=torch.tensor([4, 9]))
        >>> out["loss"].backward(); m.on_step_end(1, 1)  # the trainer calls both
        >>> float(out["rotation/instance_loss"]) > 0
        True
    """

    augmentation = "rotation"
    num_views = 1

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        head_layers: int = 1,
        head_hidden_dim: int = 1024,
        instance_dim: int = 0,
        instance_weight: float = 1.0,
        invariance_weight: float = 1.0,
        instance_temperature: float = 0.07,
        bank_momentum: float = 0.5,
    ):
        super().__init__(backbone, backbone_kwargs)
        if head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers}")
        if instance_dim < 0:
            raise ValueError(f"instance_dim must be >= 0 (0: no decoupling), got {instance_dim}")
        if instance_temperature <= 0:
            raise ValueError(f"instance_temperature must be > 0, got {instance_temperature}")
        if not 0 <= bank_momentum < 1:
            raise ValueError(f"bank_momentum must be in [0, 1), got {bank_momentum}")
        if instance_weight < 0 or invariance_weight < 0:
            raise ValueError(f"instance_weight and invariance_weight must be >= 0, got {instance_weight}, {invariance_weight}")
        self.classifier = mlp(self.num_features, head_hidden_dim, 4, num_layers=head_layers)
        self.instance_dim = instance_dim
        self.instance_weight, self.invariance_weight = instance_weight, invariance_weight
        self.instance_temperature, self.bank_momentum = instance_temperature, bank_momentum
        self.instance_head = nn.Linear(self.num_features, instance_dim) if instance_dim else None
        # (N, instance_dim), sized by the training set in on_train_start; saved with the weights for resuming
        self.register_buffer("memory_bank", torch.zeros(0, instance_dim))
        self._pending_update: tuple[torch.Tensor, torch.Tensor] | None = None

    def init_memory_bank(self, num_images: int, seed: int = 0) -> None:
        """Fills the memory bank with ``num_images`` random unit vectors (the same on every rank)."""
        if num_images < 2:
            raise ValueError(f"instance discrimination needs at least 2 training images, got {num_images}")
        generator = torch.Generator().manual_seed(seed)
        bank = F.normalize(torch.randn(num_images, self.instance_dim, generator=generator), dim=1)
        self.memory_bank = bank.to(self.memory_bank.device)

    def on_train_start(self, trainer: Any) -> None:
        if self.instance_head is not None and self.memory_bank.shape[0] != len(trainer.train_set):
            self.init_memory_bank(len(trainer.train_set), seed=int(trainer.config.train.seed))

    def forward(self, views: list[torch.Tensor], indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if len(views) != 1:
            raise ValueError(f"rotation prediction takes 1 view, got {len(views)}")
        batch = views[0].shape[0]
        rotated, labels = rotate_batch(views[0])
        features = self.backbone(rotated)
        logits = self.classifier(features)
        loss = F.cross_entropy(logits.float(), labels)
        out = {
            "embedding": features[:batch].detach(),
            "rotation/accuracy": (logits.argmax(1) == labels).float().mean().detach(),
        }
        if self.instance_head is not None:
            instance, invariance = self._decoupling_losses(features, indices, batch)
            loss = loss + self.instance_weight * instance + self.invariance_weight * invariance
            out.update({"rotation/instance_loss": instance.detach(), "rotation/invariance_loss": invariance.detach()})
        return {"loss": loss, **out}

    def _decoupling_losses(self, features: torch.Tensor, indices: torch.Tensor | None, batch: int):
        if indices is None:
            raise ValueError("rotation with instance_dim > 0 needs `indices`, the dataset indices of the batch "
                             "(the trainer passes them)")
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("the memory bank is empty: call init_memory_bank(len(train_set)) first "
                               "(the trainer's on_train_start does)")
        indices = indices.to(self.memory_bank.device)
        if int(indices.max()) >= self.memory_bank.shape[0]:
            raise ValueError(f"index {int(indices.max())} is outside the memory bank of {self.memory_bank.shape[0]} images")
        z = F.normalize(self.instance_head(features).float().view(4, batch, -1), dim=2)
        mean = z.mean(0)
        invariance = (z - mean).pow(2).sum(2).mean()
        instance = instance_softmax(mean, self.memory_bank, indices, self.instance_temperature)
        # applied in on_step_end: backward still needs the bank as the loss saw it
        self._pending_update = (distributed.all_gather_no_grad(indices), distributed.all_gather_no_grad(mean.detach()))
        return instance, invariance

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Writes the last batch's embeddings into the memory bank (after its backward pass)."""
        if self._pending_update is not None:
            update_memory_bank(self.memory_bank, *self._pending_update, momentum=self.bank_momentum)
            self._pending_update = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        saved = state_dict.get(prefix + "memory_bank")
        if saved is not None:  # sized by the training set: take the saved shape
            self.memory_bank = torch.empty_like(saved, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
