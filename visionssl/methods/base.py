"""The base class every self-supervised method derives from."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from visionssl.backbones import BACKBONES, resolve_backbone
from visionssl.errors import ConfigError

VIT_MODULE = "timm.models.vision_transformer"  # the timm module whose models take dynamic_img_size


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

    Everything the trainer and the config reader use of a method is declared here with its default, so a
    new method overrides only what it needs. Subclasses declare every hyperparameter as a keyword argument of
    ``__init__`` (with the paper's default) and implement ``forward``.

    Construction and forward:
        ``__init__(backbone, backbone_kwargs, **hparams)``: sets ``self.backbone`` (``num_features`` is its
        output size); the hyperparameters are what ``method.<key>`` in a config may set.
        ``forward(views) -> dict``: ``views`` a list of ``num_views`` (B, C, H, W) tensors; returns at least
        ``"loss"`` (0-d), usually ``"embedding"`` (the detached backbone features of the first view) and any
        0-d ``"<method>/<name>"`` tensors, which the trainer logs.

    Class attributes (read before or while the trainer is built):
        augmentation: name of the augmentation preset that makes this method's views (default ``"simclr"``).
        num_views: how many views the preset makes per image (default 2).
        recipe: name of the YAML recipe under ``visionssl/configs`` (default None: the method name).
        cpu_bf16: whether ``train.precision=auto`` may pick bf16 on a CPU (default True; False for methods
            that feed small patches, whose 1x1 feature maps gave non-finite gradients in oneDNN's bf16 backward).
        needs_indices: whether ``forward(views, indices=...)`` takes the dataset indices of the batch (default
            False; DeepCluster's pseudo-labels); the trainer passes them only then.
        decay_norm_and_bias: whether weight decay also applies to 1-d parameters (biases, norm scales and
            shifts), read by ``param_groups`` (default True). The paper default per method: True for plain-SGD
            papers whose official code decays every parameter (MoCo, SimSiam, DeepCluster, RotNet, and the
            Caffe-era jigsaw and context); False for the LARS papers (SimCLR, BYOL, VICReg, Barlow Twins, SwAV's
            ResNet head aside, MoCo v3 on a ResNet) and for DINO and MAE, which exclude biases and norms.
        norm_and_bias_lr_scale: the learning rate of the 1-d parameters' group relative to the others, when they
            are excluded from decay (default 1.0; Barlow Twins: 0.024, the paper's 0.0048 / 0.2); the group's
            ``"lr_scale"``, which ``visionssl.engine.optim.create_optimizer`` honours.
        multi_size_views: whether the views come in several sizes (multi-crop: SwAV, DINO); a timm ViT built by
            name is then built with ``dynamic_img_size=True`` (default False).
        hparam_ranges: valid ranges of this method's hyperparameters, checked by
            ``visionssl.engine.config.validate`` before the generic ones of ``engine.config.HPARAM_RANGES``:
            ``{pattern: (low, high, low_inclusive)}`` with shell patterns as keys, None for an unbounded end,
            the first matching pattern wins (default ``{}``; DeepCluster: ``{"proj_dim": (0, None, True)}``).
        hparam_choices: the values a text hyperparameter may take, checked with the ranges:
            ``{name: (value, ...)}`` (default ``{}``; context prediction: ``{"color": ("drop", "project", "none")}``).

    Called by the config reader:
        ``check_config(hparams, config)`` (staticmethod): cross-checks of the resolved hyperparameters against
        the run config, before any work starts; raise ``ValueError`` (reported as a ``ConfigError``) for a
        combination the method cannot run, e.g. MoCo's queue smaller than the batch. Default: nothing.

    Called by the trainer, in this order:
        ``param_groups(weight_decay)``: the optimizer's parameter groups, once when the optimizer is built (a
        group with ``"fixed_lr": True`` keeps its lr). Default: decay per ``decay_norm_and_bias``.
        ``on_train_start(context)``: once before the first epoch (after a resumed run's state is loaded).
        Default: nothing.
        ``on_epoch_start(context)``: before each epoch (not when resuming mid-epoch), e.g. DeepCluster's
        clustering. Default: nothing. ``context`` is a ``TrainingContext``: the trainer, seen through what the
        hooks may use.
        ``sample_weights`` / ``sample_labels``: read after ``on_epoch_start`` for the epoch's sampler: per-image
        weights, or per-image labels to draw uniformly over (``sample_labels`` wins). Default: None for both
        (uniform sampling); a property where they change.
        ``forward(views[, indices])``: every step.
        ``on_step_end(step, total_steps)``: after every optimizer step (``step`` counted from 1), e.g. the EMA
        update of a momentum target (``visionssl.methods.momentum.MomentumTarget``). Default: nothing.
    """

    backbone: nn.Module  # set by __init__
    augmentation: str = "simclr"
    num_views: int = 2
    recipe: str | None = None
    cpu_bf16: bool = True
    needs_indices: bool = False
    decay_norm_and_bias: bool = True
    norm_and_bias_lr_scale: float = 1.0
    multi_size_views: bool = False
    hparam_ranges: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {}
    hparam_choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    sample_weights: torch.Tensor | None = None
    sample_labels: torch.Tensor | None = None

    def __init__(self, backbone: str | nn.Module = "resnet18", backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        backbone_kwargs = dict(backbone_kwargs or {})
        if self.multi_size_views:
            backbone_kwargs = dynamic_vit_kwargs(backbone, backbone_kwargs, type(self).__name__)
        self.backbone = resolve_backbone(backbone, **backbone_kwargs)

    @staticmethod
    def check_config(hparams: dict[str, Any], config: Any) -> None:
        """Raises ``ValueError`` for hyperparameters (all of them, resolved) the method cannot run with ``config``
        (the run config: ``config.optim.batch_size``, ...); the default accepts every combination.

        Example:
            >>> SSLMethod.check_config({"temperature": 0.1}, None) is None
            True
        """

    @property
    def num_features(self) -> int:
        """The backbone's feature size (D)."""
        return self.backbone.num_features

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        """The loss of a batch of views (see the class); every method implements it."""
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on weights, and on biases and normalisation parameters (1-d tensors) only where
        ``decay_norm_and_bias`` (the method's paper default); the 1-d group takes ``norm_and_bias_lr_scale`` x the
        learning rate. timm's LARS adapts only the groups with weight decay, so the 1-d group also skips LARS.

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
            # timm LARS does not adapt groups without decay
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": self.norm_and_bias_lr_scale},
        ]

    def on_train_start(self, trainer: TrainingContext) -> None:
        """Once before training starts or resumes; the default does nothing."""

    def on_epoch_start(self, trainer: TrainingContext) -> None:
        """Before each epoch; the default does nothing."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (from 1) of ``total_steps``; the default does nothing."""


def dynamic_vit_kwargs(backbone: str | nn.Module, kwargs: dict[str, Any], method: str) -> dict[str, Any]:
    """``kwargs`` with ``dynamic_img_size=True`` added when ``backbone`` names a timm VisionTransformer, whose
    fixed input size would refuse multi-crop's smaller local crops; a ConfigError if they set it False.

    Example:
        >>> dynamic_vit_kwargs("vit_tiny_patch16_224", {"img_size": 32}, "DINO")
        {'img_size': 32, 'dynamic_img_size': True}
        >>> dynamic_vit_kwargs("resnet18", {}, "DINO")
        {}
    """
    if not isinstance(backbone, str) or ":" in backbone or backbone in BACKBONES:
        return kwargs
    import timm

    if not timm.is_model(backbone) or timm.models.model_entrypoint(backbone).__module__ != VIT_MODULE:
        return kwargs
    if kwargs.get("dynamic_img_size", True) is not True:
        raise ConfigError(
            f"{method} takes multi-crop views of several sizes: the ViT {backbone!r} needs dynamic_img_size=True, "
            f"got backbone_kwargs dynamic_img_size={kwargs['dynamic_img_size']!r}"
        )
    return {**kwargs, "dynamic_img_size": True}


def check_view_size(backbone: nn.Module, view: torch.Tensor, method: str) -> None:
    """A ConfigError, instead of timm's assertion, when a fixed-size ViT is given a view of another size.

    Example:
        >>> check_view_size(nn.Identity(), torch.zeros(1, 3, 8, 8), "DINO") is None
        True
    """
    patch_embed = getattr(backbone, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if not getattr(patch_embed, "strict_img_size", False) or size is None or tuple(view.shape[-2:]) == tuple(size):
        return
    raise ConfigError(
        f"{method}: the backbone is a ViT of fixed input size {tuple(size)} but a view is {tuple(view.shape[-2:])}; "
        f"build it with dynamic_img_size=True (backbone_kwargs) for multi-crop views of several sizes"
    )


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    last_bn: bool = False,
    bias: bool | None = None,
) -> nn.Sequential:
    """Projection/prediction head: (Linear -> BN -> ReLU) x (num_layers - 1) -> Linear [-> BN]; the last Linear
    has a bias when ``bias`` (None: unless ``last_bn``).

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
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn if bias is None else bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def head_width(num_features: int, paper_width: int) -> int:
    """The width of a head layer left at None: 4 x the backbone's features, at most the paper's width.

    One rule for every family of heads, each method passing its paper's width: BYOL's projector and predictor
    hidden layers (4096, 2 x ResNet-50's 2048 features), VICReg's expander and Barlow Twins' projector (8192,
    4 x ResNet-50's). It gives the papers' widths on a ResNet-50 and solo-learn's CIFAR widths on a ResNet-18
    (2048 for both families), and keeps a small backbone's heads small: BYOL with 16 x a 256-d CNN's features
    learnt less on elpv than with 4 x. No data setting is needed: the width follows the backbone.

    Example:
        >>> head_width(512, 4096), head_width(2048, 4096), head_width(512, 8192), head_width(2048, 8192)
        (2048, 4096, 2048, 8192)
    """
    return min(paper_width, 4 * num_features)
