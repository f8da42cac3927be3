"""Export a visionssl run as a publishable zoo checkpoint.

``export_run(run_dir)`` writes three files:

- ``<name>.safetensors``: the backbone's weights alone, with timm key names (no optimizer, no
  heads, no pickled code); its metadata names the backbone and its keyword arguments;
- ``<name>.safetensors.sha256``: its sha256, in ``sha256sum`` format;
- ``<name>.zoo.yaml``: a zoo file holding one ready entry (format ``visionssl``) whose URL is the
  exported file's path. Point ``VISIONSSL_ZOO`` at it to load the model by name at once; to publish,
  upload the ``.safetensors`` file, put its public URL first in ``urls`` and share the entry.

``export_hub(run_dir, out_dir)`` writes timm's Hugging Face folder instead (``config.json``,
``model.safetensors``, a ``README.md`` model card; see ``visionssl.zoo.hub``), which
``timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)`` loads, and ``huggingface_hub``
uploads as it is. It needs a timm backbone: visionssl's own (``resnet18_cifar``, ...) are not timm models.

Example (with a run made by ``visionssl pretrain --out runs/demo``):
    >>> exported = export_run("runs/demo")  # doctest: +SKIP
    >>> exported.path, exported.sha256  # doctest: +SKIP
    >>> export_hub("runs/demo", "hub/demo").sha256  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from visionssl.errors import ConfigError
from visionssl.files import atomic_write
from visionssl.zoo.catalog import ZooError, parse_zoo
from visionssl.zoo.hub import WEIGHTS_NAME, model_card, timm_config, write_folder
from visionssl.zoo.integrity import sha256_file
from visionssl.zoo.safe_load import is_safetensors


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """What ``export_run`` wrote: the weights file, its sha256, the zoo entry and where they are."""

    path: Path
    sha256: str
    entry: dict
    entry_path: Path
    sha256_path: Path


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    trust_code: bool = False,
) -> ExportedModel:
    """Writes the backbone of a run (a run directory or a checkpoint file) as safetensors + sha256 + zoo entry.

    Args:
        run_dir: a visionssl run directory, or one of its checkpoint files.
        out: the ``.safetensors`` file to write (default ``<run_dir>/export/<name>.safetensors``).
        name: the zoo name (default: the run directory's name, made safe for a folder name).
        trust_code: allow a code backbone (``module:function``) that the run directory did not record
            as its own (see ``visionssl.backbones.trust``). The exported file's loaders need it again.
    """
    run = Path(run_dir)
    source = _run_source(run, trust_code)
    ckpt, config = source.checkpoint, source.config
    state = {k: v.detach().cpu().contiguous() for k, v in source.build().state_dict().items()}
    spec, kwargs = {"name": source.backbone}, dict(source.backbone_kwargs)

    name = name or _default_name(run)
    out = Path(out) if out else (run if run.is_dir() else run.parent) / "export" / f"{name}.safetensors"
    if not is_safetensors(out):
        raise ZooError(f"the exported file must end in .safetensors, got {out}")
    method = (config.get("method") or {}).get("name", "unknown")
    metadata = {
        "format": "visionssl",
        "backbone": spec["name"],
        "backbone_kwargs": json.dumps(kwargs),
        "method": str(method),
        "epoch": str(ckpt.get("epoch", "")),
    }
    atomic_write(out, save_safetensors(state, metadata))
    digest = sha256_file(out)
    sha_path = out.with_name(out.name + ".sha256")
    atomic_write(sha_path, f"{digest}  {out.name}\n")

    entry = {
        "name": name,
        "method": str(method),
        "backbone": spec["name"],
        "backbone_kwargs": kwargs,
        "urls": [str(out.resolve())],
        "sha256": digest,
        "size": out.stat().st_size,
        "format": "visionssl",
        "recipe": {
            "dataset": (config.get("data") or {}).get("name"),
            "epochs": ckpt.get("epoch"),
            "batch_size": (config.get("optim") or {}).get("batch_size"),
        },
        "metrics": _eval_metrics(ckpt.get("metrics") or {}, run),
        "paper": None,
        "license": None,
        "note": f"exported by `visionssl export` from {run.resolve()}",
    }
    if not entry["backbone_kwargs"]:
        del entry["backbone_kwargs"]
    zoo = {"models": [entry]}
    parse_zoo(zoo, origin=out.parent / "entry.yaml")  # the entry we hand out must be valid
    entry_path = out.with_name(f"{name}.zoo.yaml")
    entry_path.write_text(
        f"# Zoo entry for {out.name}, written by `visionssl export`.\n"
        f"# Use it now: VISIONSSL_ZOO={entry_path} python -c \"import visionssl as vs; vs.zoo.load('{name}')\"\n"
        f"# Publish: upload {out.name}, put its public URL first in `urls`, fill in metrics/paper/license,\n"
        f"# and add the entry to your project's zoo file (or send it to visionssl's model_zoo.yaml).\n"
        + yaml.safe_dump(zoo, sort_keys=False)
    )
    return ExportedModel(path=out, sha256=digest, entry=entry, entry_path=entry_path, sha256_path=sha_path)


def _eval_metrics(metrics: dict[str, Any], run: Path) -> list[dict]:
    """The evaluation numbers (kNN / linear accuracies) among a checkpoint's last logged metrics."""
    keep = re.compile(r"knn|linear|top1|top-1|acc", re.IGNORECASE)
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if (isinstance(v, (int, float)) and not isinstance(v, bool)) or (torch.is_tensor(v) and v.numel() == 1)
    }
    return [
        {"name": k, "value": v, "source": f"visionssl run {run.resolve()} (last logged metrics)"}
        for k, v in numeric.items()
        if keep.search(k)
    ]


@dataclasses.dataclass(frozen=True)
class HubExport:
    """What ``export_hub`` wrote: the folder, its three files and the sha256 of ``model.safetensors``."""

    folder: Path
    config_path: Path
    weights_path: Path
    readme_path: Path
    sha256: str


def export_hub(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    license: str | None = None,  # noqa: A002  (the model card's field name)
    trust_code: bool = False,
) -> HubExport:
    """Writes the backbone of a run as a timm / Hugging Face folder: config.json, model.safetensors, README.md.

    ``timm.create_model("local-dir:OUT", pretrained=True, num_classes=0)`` then gives the run's backbone
    (checked before the folder is put in place). The run's backbone must be a timm model (its keyword
    arguments go to ``model_args``); visionssl's own backbones (``resnet18_cifar``, ...) are refused with a
    ``ConfigError``: export those with ``export_run``. The folder is written all at once; an existing
    non-empty ``out_dir`` is replaced only with ``overwrite``, and a link there is refused.

    Args:
        run_dir: a visionssl run directory, or one of its checkpoint files.
        out_dir: the folder to write (default ``<run_dir>/export/<run name>``).
        overwrite: replace a non-empty ``out_dir``.
        license: the model card's license (an SPDX id such as ``apache-2.0``; default ``unknown``).
        trust_code: as for ``export_run``.

    Example:
        >>> export_hub("runs/missing")
        Traceback (most recent call last):
        ...
        visionssl.errors.CheckpointError: checkpoint runs/missing does not exist (expected a run directory, ...)
    """
    import timm

    from visionssl.backbones import BACKBONES

    run = Path(run_dir)
    source = _run_source(run, trust_code)
    if source.backbone in BACKBONES or ":" in source.backbone or not timm.is_model(source.backbone):
        raise ConfigError(
            f"{run}: backbone {source.backbone!r} is a visionssl backbone, not a timm model, so "
            f"timm.create_model('local-dir:...') cannot build it; --format hub takes runs on timm backbones "
            f"(e.g. resnet18, vit_small_patch16_224): export this one with the default format (visionssl export {run})"
        )
    kwargs = {k: v for k, v in source.backbone_kwargs.items() if k != "pretrained"}
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        raise ConfigError(f"{run}: backbone kwargs {kwargs!r} cannot be written to config.json (not JSON)") from None
    net = source.build().eval()
    config, ckpt = source.config, source.checkpoint
    image_size = int((config.get("augment") or {}).get("image_size") or 224)
    cfg = timm_config(net, kwargs, image_size=image_size)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {
        "format": "pt",  # Hugging Face's tag for PyTorch tensors; the rest lets visionssl load the file alone
        "backbone": cfg["architecture"],
        "backbone_kwargs": json.dumps(kwargs),
        "method": str((config.get("method") or {}).get("name", "unknown")),
        "epoch": str(ckpt.get("epoch", "")),
    }
    weights = save_safetensors(state, metadata)
    digest = hashlib.sha256(weights).hexdigest()
    out = (
        Path(out_dir) if out_dir is not None else (run if run.is_dir() else run.parent) / "export" / _default_name(run)
    )
    card = model_card(
        name=out.name,
        config=config,
        epoch=ckpt.get("epoch"),
        timm_cfg=cfg,
        sha256=digest,
        metrics=_eval_metrics(ckpt.get("metrics") or {}, run),
        license=license,
    )
    files = {"config.json": json.dumps(cfg, indent=2) + "\n", WEIGHTS_NAME: weights, "README.md": card}
    folder = write_folder(out, files, overwrite=overwrite, check=lambda staged: _check_timm_loads(staged, net))
    return HubExport(folder, folder / "config.json", folder / WEIGHTS_NAME, folder / "README.md", digest)


def save_safetensors(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save`` with its header's keys sorted, so one run exports to the same bytes (and sha256)
    every time (safetensors writes its metadata in a random order).

    Example:
        >>> a = save_safetensors({"w": torch.ones(2)}, {"backbone": "resnet18", "method": "simclr", "epoch": "1"})
        >>> a == save_safetensors({"w": torch.ones(2)}, {"epoch": "1", "method": "simclr", "backbone": "resnet18"})
        True
    """
    from safetensors.torch import save

    data = save(state, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    header = header.encode()
    if len(header) > size:  # the same keys and values never take more bytes: this would be a bug
        raise RuntimeError(f"safetensors header grew from {size} to {len(header)} bytes when sorted")
    return data[:8] + header.ljust(size) + data[8 + size :]


def _check_timm_loads(folder: Path, net: torch.nn.Module) -> None:
    """timm builds the staged folder with the backbone's own weights (else a bug in the export: internal error)."""
    import logging

    import timm

    timm_logger = logging.getLogger("timm")
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # its "loading from <hidden staging folder>" lines would only confuse
    try:
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    finally:
        timm_logger.setLevel(level)
    expected = net.state_dict()
    for key, value in loaded.state_dict().items():
        if not torch.equal(value, expected[key]):
            raise RuntimeError(f"timm loaded {folder} with {key} different from the run's backbone")


def _run_source(run: Path, trust_code: bool) -> Any:
    from visionssl.zoo.resolve import resolve_checkpoint

    source = resolve_checkpoint(run, trust_code=trust_code)
    if source.kind != "run":
        raise ZooError(f"{run} is not a visionssl run directory or training checkpoint (export takes a run)")
    return source


def _default_name(run: Path) -> str:
    run_name = run.name if run.is_dir() else run.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-.") or "model"
