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

from torch import nn

from visionssl.errors import CheckpointError
from visionssl.zoo.catalog import ZooError, get_entry
from visionssl.zoo.convert import load_file
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


__all__ = ["KINDS", "CheckpointSource", "load", "resolve_checkpoint", "safetensors_backbone"]
