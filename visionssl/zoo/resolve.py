"""One answer to "which checkpoint is this?": every ``--checkpoint`` goes through ``resolve_checkpoint``.

A spec is, in this order: an existing ``.safetensors`` file (``visionssl export``) or a folder holding
``model.safetensors`` (``visionssl export --format hub``), an existing run directory or torch checkpoint
file (a visionssl run), or else a zoo entry name. The backbone it names
is checked by the trust rules (``visionssl.backbones.trust``) when it is resolved, before anything is
built, so every command that reads a checkpoint applies the same checks on the same path.

Example:
    >>> import tempfile, torch, safetensors.torch
    >>> p = tempfile.mkdtemp() + "/w.safetensors"
    >>> safetensors.torch.save_file({"w": torch.ones(1)}, p, metadata={"backbone": "resnet18_cifar"})
    >>> source = resolve_checkpoint(p)
    >>> source.kind, source.backbone, source.backbone_kwargs
    ('export', 'resnet18_cifar', {})
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionssl.engine.build import BackboneInit
from visionssl.errors import CheckpointError
from visionssl.zoo.catalog import ZooError, get_entry
from visionssl.zoo.convert import load_file, read_checkpoint
from visionssl.zoo.download import DEFAULT_TIMEOUT, fetch
from visionssl.zoo.hub import WEIGHTS_NAME
from visionssl.zoo.safe_load import is_safetensors

KINDS = ("export", "run", "zoo")
RUN_SUFFIXES = (".pt", ".pth", ".tar")


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved checkpoint spec: what it is, the backbone it names (checked) and its run's config.

    Attributes:
        spec: the spec as given (a path or a zoo name).
        kind: ``"export"`` (a ``.safetensors`` file), ``"run"`` (a run directory or checkpoint file) or ``"zoo"``.
        path: the file or run directory (``None`` for a zoo name).
        backbone, backbone_kwargs: the architecture it names, checked like anything read from a file.
        config: the run's resolved config (runs only; ``{}`` otherwise).
        trust_code: whether the user allowed code backbones for this spec.
        checkpoint: the run's loaded checkpoint (runs only), read once for the config and the weights.
    """

    spec: str
    kind: str
    path: Path | None
    backbone: str
    backbone_kwargs: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    trust_code: bool = False
    checkpoint: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def build(self, *, offline: bool | None = None, unsafe: bool = False) -> nn.Module:
        """The backbone with the checkpoint's weights loaded strictly.

        Example:
            >>> import tempfile, torch, safetensors.torch, visionssl as vs
            >>> net = vs.create_backbone("resnet10t_cifar")
            >>> p = tempfile.mkdtemp() + "/w.safetensors"
            >>> safetensors.torch.save_file(net.state_dict(), p, metadata={"backbone": "resnet10t_cifar"})
            >>> loaded = resolve_checkpoint(p).build()
            >>> torch.equal(loaded.conv1[0].weight, net.conv1[0].weight)
            True
        """
        if self.kind == "export":
            from visionssl.zoo.convert import load_file

            return load_file(self.path, "visionssl", self.backbone, **self.backbone_kwargs)
        if self.kind == "run":
            from visionssl.engine.checkpoint import build_run_backbone

            return build_run_backbone(self.checkpoint, self.path, trust_code=self.trust_code)
        return load(self.spec, offline=offline, unsafe=unsafe, trust_code=self.trust_code)


def resolve_checkpoint(spec: str | os.PathLike, *, trust_code: bool = False) -> CheckpointSource:
    """Says what ``spec`` is (export, run or zoo entry) and checks the backbone it names; reads no weights
    beyond a run's checkpoint file.

    Raises ``ZooError``, ``CheckpointError`` or ``TrustError`` (user errors) naming the spec.

    Example:
        >>> resolve_checkpoint("moco_v2_rn50_800ep").kind
        'zoo'
        >>> resolve_checkpoint("runs/missing/last.pt")
        Traceback (most recent call last):
        ...
        visionssl.errors.CheckpointError: checkpoint runs/missing/last.pt does not exist (expected a run directory, a checkpoint file, an exported .safetensors file or a zoo name)
    """
    from visionssl.backbones.trust import check_backbone_spec, run_dir_of

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir() and (path / WEIGHTS_NAME).is_file() and not (path / "checkpoints").exists():
        path = path / WEIGHTS_NAME  # a folder in timm's convention (``visionssl export --format hub``)
    if path.exists() and is_safetensors(path):
        name, kwargs = safetensors_backbone(path, trust_code=trust_code)
        return CheckpointSource(text, "export", path, name, kwargs, trust_code=trust_code)
    if path.exists():
        from visionssl.engine.checkpoint import checkpoint_backbone, load_checkpoint

        ckpt = load_checkpoint(path)
        name, kwargs, _ = checkpoint_backbone(ckpt, path)
        name, kwargs = check_backbone_spec(
            name, kwargs, source=f"checkpoint {path}", trust_code=trust_code, run_dir=run_dir_of(path)
        )
        return CheckpointSource(text, "run", path, name, kwargs, dict(ckpt["config"]), trust_code, ckpt)
    if "/" in text or path.suffix in RUN_SUFFIXES or is_safetensors(path):
        raise CheckpointError(
            f"checkpoint {text} does not exist (expected a run directory, a checkpoint file, an exported "
            f".safetensors file or a zoo name)"
        )
    entry = get_entry(text)
    name, kwargs = check_backbone_spec(
        entry.backbone, entry.backbone_kwargs, source=f"zoo entry {text!r} ({entry.origin})", trust_code=trust_code
    )
    return CheckpointSource(text, "zoo", None, name, kwargs, trust_code=trust_code)


def load(
    name: str,
    *,
    offline: bool | None = None,
    unsafe: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    total_timeout: float | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """The backbone of zoo entry ``name`` with its pretrained weights loaded strictly.

    The backbone is built with ``vs.create_backbone(entry.backbone, **entry.backbone_kwargs)`` (a
    timm model without classifier) and returned as built (training mode); call ``.eval()`` to
    extract features.

    Args:
        name: a zoo entry name (``vs.zoo.list()``).
        offline: use only the cache and local files (default: ``VISIONSSL_OFFLINE``).
        unsafe: allow full unpickling of a checkpoint the safe loader refuses. It runs any code
            the file holds: only for files from a source you trust.
        timeout: idle limit: seconds with less than 1 KiB from a server before trying the next mirror.
        progress: show a progress bar while downloading.
        total_timeout: seconds one mirror's whole download may take (None: no limit).
        trust_code: allow an entry whose backbone is code (``module:function`` / ``file.py:function``);
            by default an entry may name registered or timm backbones only.
    """
    from visionssl.backbones.trust import check_backbone_spec

    entry = get_entry(name)
    check_backbone_spec(
        entry.backbone, entry.backbone_kwargs, source=f"zoo entry {name!r} ({entry.origin})", trust_code=trust_code
    )
    path = fetch(entry, offline=offline, timeout=timeout, progress=progress, total_timeout=total_timeout)
    return load_file(path, entry.format, entry.backbone, unsafe=unsafe, **entry.backbone_kwargs)


def checkpoint_file(source: CheckpointSource, *, offline: bool | None = None) -> Path:
    """The one file a resolved checkpoint's weights are read from: the export, the run's checkpoint file, or
    the zoo entry's cached download (fetched and verified first when not cached).

    Example:
        >>> import tempfile, torch, safetensors.torch
        >>> p = tempfile.mkdtemp() + "/w.safetensors"
        >>> safetensors.torch.save_file({"w": torch.ones(1)}, p, metadata={"backbone": "resnet18_cifar"})
        >>> checkpoint_file(resolve_checkpoint(p)).name
        'w.safetensors'
    """
    from visionssl.engine.checkpoint import LAST

    if source.kind == "zoo":
        return Path(fetch(get_entry(source.spec), offline=offline))
    path = source.path.resolve()
    if source.kind == "run" and path.is_dir():  # the file load_checkpoint read
        path = path / "checkpoints" / LAST if (path / "checkpoints").is_dir() else path / LAST
    return path


def init_weights(
    spec: str, backbone: str, backbone_kwargs: dict[str, Any] | None = None, *, trust_code: bool = False
) -> BackboneInit:
    """The starting weights of a run's backbone (``backbone.init``) and the record of where they came from.

    ``spec`` is ``timm`` (``backbone``'s own timm weights, from the local cache only: ``timm_cached_weights``)
    or anything ``resolve_checkpoint`` takes (a zoo name, an export, a hub folder, a run), with its trust rules.
    ``backbone`` and ``backbone_kwargs`` are the run's; the weights are checked against them when loaded
    (``visionssl.engine.build.init_backbone``). The package root registers this function as the engine's
    default loader (``visionssl.engine.build.set_init_loader``): the engine sits below the zoo.

    Example:
        >>> import tempfile, torch, safetensors.torch, visionssl as vs
        >>> p = tempfile.mkdtemp() + "/w.safetensors"
        >>> net = vs.create_backbone("resnet10t_cifar")
        >>> safetensors.torch.save_file(net.state_dict(), p, metadata={"backbone": "resnet10t_cifar"})
        >>> init = init_weights(p, "resnet10t_cifar")
        >>> init.record["kind"], init.record["backbone"], len(init.record["sha256"])
        ('export', 'resnet10t_cifar', 64)
    """
    from visionssl.zoo.integrity import sha256_file

    if spec == "timm":
        return timm_init(backbone, backbone_kwargs or {})
    source = resolve_checkpoint(spec, trust_code=trust_code)
    path = checkpoint_file(source)
    digest = sha256_file(path)
    if source.kind == "export":  # from the file just hashed
        net = load_file(path, "visionssl", source.backbone, **source.backbone_kwargs)
    else:
        net = source.build()  # a run's checkpoint was read once by the resolver; a zoo entry from the cached file
    record = {
        "init": spec,
        "kind": source.kind,
        "file": str(path),
        "sha256": digest,
        "backbone": source.backbone,
        "backbone_kwargs": source.backbone_kwargs,
    }
    return BackboneInit(net.state_dict(), record)


def timm_cached_weights(name: str) -> tuple[Path, str]:
    """``(file, where)``: timm's pretrained weights for model ``name`` in the local Hugging Face or torch hub
    cache, and the hf-hub id or URL timm would fetch them from. Never downloads: not cached is a
    ``CheckpointError`` naming the weights and how to fetch them.

    Example:
        >>> timm_cached_weights("resnet18")  # doctest: +SKIP
        (PosixPath('.../models--timm--resnet18.a1_in1k/snapshots/.../model.safetensors'), 'hf-hub:timm/resnet18.a1_in1k')
    """
    import timm
    import torch.hub

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise CheckpointError(f"backbone.init=timm: timm has no pretrained weights for {name!r}")
    if cfg.file and Path(cfg.file).is_file():  # a file set by a pretrained_cfg overlay
        return Path(cfg.file), str(cfg.file)
    looked, fetch_cmd = [], f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)  # reads the cache only
            if isinstance(found, str):
                return Path(found), f"hf-hub:{cfg.hf_hub_id}"
        looked.append(f"hf-hub:{cfg.hf_hub_id} in {constants.HF_HUB_CACHE}")
        fetch_cmd = f"huggingface-cli download {repo} {names[0]}" + (f" --revision {revision}" if revision else "")
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        if cached.is_file():
            return cached, cfg.url
        looked.append(f"{cfg.url} in {cached.parent}")
    looked = looked or [str(cfg.file)]
    raise CheckpointError(
        f"backbone.init=timm: the pretrained weights of {name!r} are not in the local cache (looked for "
        f"{' and '.join(looked)}) and are never downloaded during a run; fetch them once on a machine with "
        f"internet access ({fetch_cmd}) and copy the cache here"
    )


def timm_init(name: str, backbone_kwargs: dict[str, Any]) -> BackboneInit:
    """``name``'s own timm weights from the local cache (``timm_cached_weights``), read safely and adapted by
    timm (its classifier dropped, ``in_chans`` folded) for the model built with ``backbone_kwargs``.

    Example:
        >>> timm_init("resnet18", {}).record["kind"]  # doctest: +SKIP
        'timm'
    """
    import timm

    from visionssl.zoo.integrity import sha256_file

    path, where = timm_cached_weights(name)
    digest = sha256_file(path)
    state = read_checkpoint(path)  # safetensors or torch.load(weights_only=True): data, never code
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"backbone.init=timm: {path} is not a state dict of tensors")
    kwargs = {k: v for k, v in backbone_kwargs.items() if k != "pretrained"}
    net = timm.create_model(
        name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"state_dict": state}, **kwargs
    )
    record = {
        "init": "timm",
        "kind": "timm",
        "file": str(path),
        "source": where,
        "sha256": digest,
        "backbone": name,
        "backbone_kwargs": kwargs,
    }
    return BackboneInit(net.state_dict(), record)


def safetensors_backbone(path: str | os.PathLike, *, trust_code: bool = False) -> tuple[str, dict]:
    """``(backbone, kwargs)`` named by a ``.safetensors`` file's metadata, checked like any file's (one-line errors).

    Example:
        >>> import tempfile, torch, safetensors.torch
        >>> p = tempfile.mkdtemp() + "/w.safetensors"
        >>> safetensors.torch.save_file({"w": torch.ones(1)}, p, metadata={"backbone": "resnet18_cifar"})
        >>> safetensors_backbone(p)
        ('resnet18_cifar', {})
    """
    import json

    from safetensors import safe_open

    from visionssl.backbones.trust import check_backbone_spec

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types for damaged headers)
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ZooError(f"cannot read {path} (truncated or not a safetensors file): {detail}") from None
    if "backbone" not in meta:
        raise ZooError(f"{path} does not name its backbone (metadata 'backbone'); add a zoo entry for it")
    try:
        kwargs = json.loads(meta.get("backbone_kwargs") or "{}")
    except ValueError:
        raise ZooError(f"{path}: its metadata 'backbone_kwargs' is not JSON") from None
    except RecursionError:
        raise ZooError(f"{path}: its metadata 'backbone_kwargs' is nested too deeply") from None
    return check_backbone_spec(meta["backbone"], kwargs, source=f"{path} (metadata)", trust_code=trust_code)


__all__ = [
    "KINDS",
    "CheckpointSource",
    "checkpoint_file",
    "init_weights",
    "load",
    "resolve_checkpoint",
    "safetensors_backbone",
    "timm_cached_weights",
    "timm_init",
]
