"""Export a visionssl run as a publishable zoo checkpoint.

``export_run(run_dir)`` writes three files:

- ``<name>.safetensors``: the backbone's weights alone, with timm key names (no optimizer, no
  heads, no pickled code); its metadata names the backbone and its keyword arguments;
- ``<name>.safetensors.sha256``: its sha256, in ``sha256sum`` format;
- ``<name>.zoo.yaml``: a zoo file holding one ready entry (format ``visionssl``) whose URL is the
  exported file's path. Point ``VISIONSSL_ZOO`` at it to load the model by name at once; to publish,
  upload the ``.safetensors`` file, put its public URL first in ``urls`` and share the entry.

Example (with a run made by ``visionssl pretrain --out runs/demo``):
    >>> exported = export_run("runs/demo")  # doctest: +SKIP
    >>> exported.path, exported.sha256  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from visionssl.files import atomic_write
from visionssl.zoo.catalog import ZooError, parse_zoo
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
    from safetensors.torch import save

    from visionssl.zoo.resolve import resolve_checkpoint

    run = Path(run_dir)
    source = resolve_checkpoint(run, trust_code=trust_code)
    if source.kind != "run":
        raise ZooError(f"{run} is not a visionssl run directory or training checkpoint (export takes a run)")
    ckpt, config = source.checkpoint, source.config
    state = {k: v.detach().cpu().contiguous() for k, v in source.build().state_dict().items()}
    spec, kwargs = {"name": source.backbone}, dict(source.backbone_kwargs)

    run_name = run.name if run.is_dir() else run.stem
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-.") or "model"
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
    atomic_write(out, save(state, metadata=metadata))
    digest = sha256_file(out)
    sha_path = out.with_name(out.name + ".sha256")
    sha_path.write_text(f"{digest}  {out.name}\n")

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
    import torch

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
