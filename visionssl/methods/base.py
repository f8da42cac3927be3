"""The base class every self-supervised method derives from."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from visionssl.backbones import resolve_backbone


class TrainingContext(Protocol):
    """What a method's hooks may rely on: the part of ``visionssl.engine.Trainer`` they see.

    Attributes:
        train_set: the training images (``len()``, ``.images`` uint8 (N, C, H, W), ``.targets`` or None).
        device: where the method runs.
        epoch: the number of finished epochs.
        steps_per_epoch: optimizer steps in one epoch.
        augment: the view-making preset (``.channels``: the backbone's input channels).
        config: the resolved run config (``config.augment.image_size``, ...).
        optimizer: the optimizer (a hook may drop the per-parameter state of re-initialised parameters).
    """

    train_set: Any
    device: torch.device
    epoch: int
    steps_per_epoch: int
    augment: Any
    config: Any
    optimizer: torch.optim.Optimizer

    def log_scalars(self, scalars: dict[str, float]) -> None:
        """Records scalars in the run's metrics at the current step."""


class SSLMethod(nn.Module):
    """A self-supervised method: a backbone plus the heads and loss of one paper.

    Subclasses declare every hyperparameter as a keyword argument of ``__init__`` (with the
    paper's default) and implement ``forward(views) -> dict`` with at least ``"loss"``.

    Class attributes:
        augmentation: name of the augmentation preset that makes this method's views.
        num_views: how many views the preset makes per image.
        recipe: name of the YAML recipe under ``visionssl/configs`` (default: the method name).
        cpu_bf16: whether ``train.precision=auto`` may pick bf16 on a CPU (False for methods that feed
            small patches, whose 1x1 feature maps gave non-finite gradients in oneDNN's bf16 backward).
        needs_indices: whether ``forward(views, indices=...)`` takes the dataset indices of the batch
            (e.g. DeepCluster's pseudo-labels); the trainer passes them only then.
        decay_norm_and_bias: whether weight decay also applies to 1-d parameters (biases, norm scales and
            shifts). The paper default per method: True for plain-SGD papers whose official code decays
            every parameter (MoCo, SimSiam, DeepCluster, RotNet, and the Caffe-era jigsaw and context);
            False for the LARS papers (SimCLR, BYOL, VICReg), which exclude biases and BN parameters.

    Hooks the trainer calls (all optional):
        ``param_groups(weight_decay)``: optimizer parameter groups (a group with ``"fixed_lr": True`` keeps its lr).
        ``on_train_start(context)`` / ``on_epoch_start(context)``: e.g. DeepCluster's clustering; ``context``
        is a ``TrainingContext`` (the trainer, seen through what the hooks may use).
        ``on_step_end(step, total_steps)``: e.g. an EMA update of a target network.
        ``sample_weights``: per-sample weights for the next epoch's sampler, or ``None``.
        ``check_config(hparams, config)`` (staticmethod): raise ``ConfigError`` for a combination the
        method cannot run (e.g. a queue smaller than the batch); called before any work starts.
    """

    augmentation: str = "simclr"
    num_views: int = 2
    recipe: str | None = None
    cpu_bf16: bool = True
    needs_indices: bool = False
    decay_norm_and_bias: bool = True
    sample_weights: torch.Tensor | None = None

    def __init__(self, backbone: str | nn.Module = "resnet18", backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = resolve_backbone(backbone, **(backbone_kwargs or {}))

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on weights, and on biases and normalisation parameters (1-d tensors) only where
        ``decay_norm_and_bias`` (the method's paper default).

        Example:
            >>> import visionssl as vs
            >>> groups = vs.create_method("simclr", backbone="resnet10t_cifar").param_groups(1e-4)
            >>> [g["weight_decay"] for g in groups], all(p.ndim <= 1 for p in groups[1]["params"])
            ([0.0001, 0.0], True)
        """
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 and not self.decay_norm_and_bias else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},  # timm LARS does not adapt groups without decay
        ]

    def on_train_start(self, trainer: TrainingContext) -> None:
        pass

    def on_epoch_start(self, trainer: TrainingContext) -> None:
        pass

    def on_step_end(self, step: int, total_steps: int) -> None:
        pass


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Projection/prediction head: (Linear -> BN -> ReLU) x (num_layers - 1) -> Linear [-> BN].

    Example:
        >>> import torch
        >>> mlp(512, 2048, 128)(torch.randn(4, 512)).shape
        torch.Size([4, 128])
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
