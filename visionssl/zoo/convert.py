"""Checkpoint converters: every major public SSL checkpoint layout into a timm backbone's keys.

A converter takes the loaded checkpoint (whatever ``torch.load`` returned) and returns the
backbone's state dict with timm key names: it walks the upstream nesting (``state_dict``,
``classy_state_dict`` -> ``base_model`` -> ``model`` -> ``trunk``), keeps the keys under the
backbone's prefix (``module.encoder_q.``, ``_feature_blocks.``, ...) with the prefix removed, and
drops the heads (projector, predictor, prototypes, classifier). The converters only rename keys,
so they work for any depth or width; ResNets need no further mapping because torchvision, VISSL,
OpenMMLab and timm ResNets share key names (conv1, bn1, layer1..4, downsample.0/1; a test checks
it against torchvision).

``load_strict`` then loads the result into the backbone: a missing or unexpected key, or a shape
that does not fit, is an error that lists the keys.

Checkpoints are read by ``visionssl.zoo.safe_load.read_checkpoint``: ``torch.load(weights_only=True)``
with an allow-list of the bookkeeping that real upstream files carry (mmengine's ``message_hub``,
numpy arrays and scalars); anything else is refused unless the caller passes ``unsafe=True``.

Example:
    >>> import torch, timm
    >>> net = timm.create_model("resnet18", num_classes=0)
    >>> upstream = {"state_dict": {"module.encoder_q." + k: v for k, v in net.state_dict().items()}}
    >>> upstream["state_dict"]["module.encoder_q.fc.weight"] = torch.zeros(128, 512)  # the MoCo head
    >>> state = convert_checkpoint("moco", upstream)
    >>> load_strict(timm.create_model("resnet18", num_classes=0), state)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from visionssl.registry import Registry
from visionssl.zoo.errors import ZooError
from visionssl.zoo.safe_load import read_checkpoint, safe_globals  # noqa: F401  (re-exported)

CONVERTERS = Registry("checkpoint format")
StateDict = dict[str, torch.Tensor]


def register_converter(name: str) -> Callable:
    """Registers ``fn(checkpoint) -> state_dict`` as the converter of format ``name``.

    Example:
        >>> @register_converter("doc_plain")
        ... def plain(checkpoint):
        ...     return dict(checkpoint)
        >>> "doc_plain" in list_formats()
        True
    """
    return CONVERTERS.register(name)


def list_formats() -> list[str]:
    """Names of the registered checkpoint formats (the ``format`` field of a zoo entry)."""
    return CONVERTERS.list()


def convert_checkpoint(format: str, checkpoint: Any) -> StateDict:  # noqa: A002  (the zoo field is called format)
    """Converts a loaded upstream checkpoint of ``format`` into backbone keys (see the module docstring)."""
    if format not in CONVERTERS:
        raise ZooError(f"unknown checkpoint format {format!r}; valid: {', '.join(list_formats())}")
    return CONVERTERS.get(format)(checkpoint)


# ----------------------------------------------------------------------------------------------
# helpers shared by the converters


def unwrap(checkpoint: Any, *keys: str) -> Mapping[str, Any]:
    """Walks ``checkpoint[k1][k2]...``; a missing level names it and lists the keys found there.

    Example:
        >>> unwrap({"a": {"b": {"x": 1}}}, "a", "b")
        {'x': 1}
    """
    node, path = checkpoint, "checkpoint"
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            found = ", ".join(map(repr, list(node)[:12])) if isinstance(node, Mapping) else type(node).__name__
            raise ZooError(f"{path} has no key {key!r} (found: {found}); is the checkpoint format right?")
        node, path = node[key], f"{path}[{key!r}]"
    if not isinstance(node, Mapping):
        raise ZooError(f"{path} is a {type(node).__name__}, not a state dict")
    return node


def take_prefix(state: Mapping[str, Any], prefix: str, drop: tuple[str, ...] = ()) -> StateDict:
    """The tensors whose key starts with ``prefix``, prefix removed, minus keys starting with ``drop``.

    Example:
        >>> take_prefix({"module.encoder.conv1.weight": 1, "module.encoder.fc.weight": 2, "module.predictor.0.weight": 3},
        ...             "module.encoder.", drop=("fc.",))
        {'conv1.weight': 1}
    """
    kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not kept:
        raise ZooError(
            f"no key of the checkpoint starts with {prefix!r} (first keys: {_listing(state)}); "
            f"is the checkpoint format right?"
        )
    return {k: v for k, v in kept.items() if not k.startswith(drop)}


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Loads ``state_dict`` into ``model``; any missing or unexpected key or wrong shape is an error listing them.

    BatchNorm ``num_batches_tracked`` counters absent from old checkpoints are the only keys
    tolerated as missing (they are not weights; the model keeps its own).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ZooError(
            f"{source} does not fit the backbone {type(model).__name__}: "
            f"{len(missing)} missing key(s) [{_listing(missing)}], {len(unexpected)} unexpected key(s) [{_listing(unexpected)}]. "
            f"Check the entry's backbone and format."
        )
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs backbone {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ZooError(
            f"{source} does not fit the backbone {type(model).__name__}: {len(wrong)} shape mismatch(es) "
            f"[{_listing(wrong)}]. Check the entry's backbone (depth, width) and backbone_kwargs."
        )
    full = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state_dict}
    model.load_state_dict(full, strict=True)


def _listing(keys: Any, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(map(str, keys[:limit]))
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


# ----------------------------------------------------------------------------------------------
# one converter per upstream format


@register_converter("torchvision")
def torchvision_state(checkpoint: Mapping[str, Any]) -> StateDict:
    """A plain torchvision-style state dict (VICReg's ``resnet50.pth``); a classifier ``fc.`` is dropped."""
    return take_prefix(unwrap(checkpoint), "", drop=("fc.",))


@register_converter("moco")
def moco(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/moco (v1, v2): ``state_dict`` -> ``module.encoder_q.*``; the ``fc`` head is dropped."""
    return take_prefix(unwrap(checkpoint, "state_dict"), "module.encoder_q.", drop=("fc.",))


@register_converter("mocov3")
def mocov3(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/moco-v3 ResNet: ``state_dict`` -> ``module.base_encoder.*``; the projector ``fc`` is dropped."""
    return take_prefix(unwrap(checkpoint, "state_dict"), "module.base_encoder.", drop=("fc.",))


@register_converter("mocov3_vit")
def mocov3_vit(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/moco-v3 ViT: ``state_dict`` -> ``module.base_encoder.*``; the projector ``head`` is dropped.

    Also reads the ``{model}`` file of upstream's ``convert_to_deit.py`` (keys unprefixed, head
    already gone). Upstream's ViT is timm 0.4.9's ``VisionTransformer``, whose keys are today's
    timm keys; its ViT-S has 12 heads (timm's ``vit_small_patch16_224`` has 6: pass ``num_heads=12``).

    Example:
        >>> one = torch.ones(1)
        >>> list(mocov3_vit({"state_dict": {"module.base_encoder.norm.weight": one, "module.base_encoder.head.0.weight": one,
        ...                                 "module.momentum_encoder.norm.weight": one, "module.predictor.0.weight": one}}))
        ['norm.weight']
    """
    if isinstance(checkpoint, Mapping) and "state_dict" not in checkpoint and "model" in checkpoint:
        return take_prefix(unwrap(checkpoint, "model"), "", drop=("head.",))
    return take_prefix(unwrap(checkpoint, "state_dict"), "module.base_encoder.", drop=("head.",))


@register_converter("dino")
def dino(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/dino: the backbone-only release (a flat state dict) or the full checkpoint's ``teacher``.

    The full checkpoint (``*_full_checkpoint.pth``, ``main_dino.py``'s ``checkpoint.pth``) is
    ``{student, teacher, optimizer, epoch, args, dino_loss[, fp16_scaler]}``; the teacher is taken,
    as upstream's ``eval_linear.py`` / ``eval_knn.py`` do, ``module.`` (DDP, ResNets only) and
    ``backbone.`` removed and the DINO ``head`` dropped. The ViTs' keys are timm's; the ResNet is
    torchvision's (a classifier ``fc.`` is dropped).

    Example:
        >>> one = torch.ones(1)
        >>> full = {"student": {"module.backbone.norm.weight": one}, "teacher": {"backbone.norm.weight": one, "head.mlp.0.weight": one}}
        >>> list(dino(full)), list(dino({"norm.weight": one}))
        (['norm.weight'], ['norm.weight'])
    """
    state = unwrap(checkpoint)
    if "teacher" not in state:
        return take_prefix(state, "", drop=("fc.", "head."))
    teacher = {k.removeprefix("module."): v for k, v in unwrap(checkpoint, "teacher").items()}
    return take_prefix(teacher, "backbone.")


@register_converter("mae")
def mae(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/mae: ``model`` -> the encoder; ``mask_token`` and the ``decoder_*`` modules are dropped.

    Reads the releases (``mae_pretrain_vit_base.pth``, encoder only) and ``main_pretrain.py``'s
    ``checkpoint-N.pth`` (``{model, optimizer, epoch, scaler, args}``, the whole autoencoder). The
    encoder's final ``norm`` is kept: it fits timm's ViT with ``global_pool="token"`` (the CLS
    token, MAE's linear probe with ``--cls_token``) or ``global_pool="avg", fc_norm=False`` (norm,
    then the mean of the patch tokens). MAE's fine-tuning ``fc_norm`` is trained then, not released.

    Example:
        >>> one = torch.ones(1)
        >>> list(mae({"model": {"cls_token": one, "norm.weight": one, "mask_token": one, "decoder_pred.weight": one}}))
        ['cls_token', 'norm.weight']
    """
    return take_prefix(unwrap(checkpoint, "model"), "", drop=("decoder_", "mask_token", "head."))


@register_converter("simsiam")
def simsiam(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/simsiam: ``state_dict`` -> ``module.encoder.*``; the projector ``fc`` is dropped."""
    return take_prefix(unwrap(checkpoint, "state_dict"), "module.encoder.", drop=("fc.",))


@register_converter("swav")
def swav(checkpoint: Mapping[str, Any]) -> StateDict:
    """facebookresearch/swav (SwAV, DeepCluster-v2): ``module.*``; projection head and prototypes dropped.

    The releases are the flat DDP state dict; the training checkpoints of ``main_swav.py`` and
    ``main_deepclusterv2.py`` (``{epoch, state_dict, optimizer[, amp]}``) hold it under
    ``state_dict``, which is unwrapped as upstream's ``eval_linear.py`` does. Their ResNet pads the
    input by 1 and uses padding 2 in the stem convolution, which computes exactly what timm's
    padding 3 computes, so the weights need no change.
    """
    state = unwrap(checkpoint)
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return take_prefix(state, "module.", drop=("projection_head.", "prototypes."))


@register_converter("vissl")
def vissl(checkpoint: Mapping[str, Any]) -> StateDict:
    """VISSL: ``classy_state_dict`` -> ``base_model`` -> ``model`` -> ``trunk`` (or ``model_state_dict``), ``_feature_blocks.*``."""
    if isinstance(checkpoint, Mapping) and "classy_state_dict" in checkpoint:
        trunk = unwrap(checkpoint, "classy_state_dict", "base_model", "model", "trunk")
    elif isinstance(checkpoint, Mapping) and "model_state_dict" in checkpoint:
        trunk = unwrap(checkpoint, "model_state_dict")
    else:
        trunk = unwrap(checkpoint)
    return take_prefix(trunk, "_feature_blocks.")


@register_converter("openmmlab")
def openmmlab(checkpoint: Mapping[str, Any]) -> StateDict:
    """OpenMMLab (mmselfsup, mmpretrain): ``state_dict`` -> ``backbone.*``; neck, head and target network dropped.

    A ``state_dict`` with no ``backbone.`` key is taken whole: it is the backbone alone, as
    mmselfsup's ``extract_backbone_weights.py`` writes it (``{state_dict: {conv1...}, author}``).
    """
    state = unwrap(checkpoint, "state_dict")
    if any(k.startswith("backbone.") for k in state):
        return take_prefix(state, "backbone.")
    return take_prefix(state, "")


@register_converter("visionssl")
def visionssl_state(checkpoint: Mapping[str, Any]) -> StateDict:
    """Ours: a file written by ``visionssl export`` (the backbone alone), or a full training checkpoint."""
    from visionssl.engine.checkpoint import CHECKPOINT_FORMAT, backbone_state_dict

    if isinstance(checkpoint, Mapping) and checkpoint.get("format") == CHECKPOINT_FORMAT and "method" in checkpoint:
        return backbone_state_dict(checkpoint["method"])
    return dict(unwrap(checkpoint))


def load_file(
    path: str | os.PathLike,
    format: str,
    backbone: str,
    *,
    unsafe: bool = False,  # noqa: A002
    **backbone_kwargs: Any,
) -> nn.Module:
    """Builds ``backbone`` and loads the checkpoint file ``path`` of ``format`` into it, strictly.

    Example:
        >>> import tempfile, timm, torch
        >>> ref = timm.create_model("resnet18", num_classes=0)
        >>> p = tempfile.mkdtemp() + "/vicreg.pth"
        >>> torch.save(ref.state_dict(), p)
        >>> net = load_file(p, "torchvision", "resnet18")
        >>> torch.equal(net.conv1.weight, ref.conv1.weight)
        True
    """
    from visionssl.backbones.trust import build_backbone

    state = convert_checkpoint(format, read_checkpoint(path, unsafe=unsafe))
    net = build_backbone(backbone, backbone_kwargs, source=str(path))
    load_strict(net, state, source=f"{path} (format {format!r})")
    return net
