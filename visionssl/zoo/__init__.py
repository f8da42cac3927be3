"""The model zoo: pretrained self-supervised checkpoints by name, verified, loaded into timm backbones.

The checkpoints are listed in ``model_zoo.yaml`` (see ``visionssl.zoo.catalog`` for how it merges
with ``$VISIONSSL_HOME/zoo.yaml`` and ``VISIONSSL_ZOO``). ``load`` downloads a checkpoint into the
cache (``visionssl.zoo.download``), checks its sha256, reads it without running code from it and
converts its upstream layout into the backbone's keys (``visionssl.zoo.convert``).

Example:
    >>> import visionssl as vs
    >>> "moco_v2_rn50_800ep" in vs.zoo.list("moco*")
    True
    >>> vs.zoo.info("simsiam_rn50_100ep").metrics[0]["value"]
    68.1
    >>> backbone = vs.zoo.load("moco_v2_rn50_800ep").eval()  # downloads once  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import datetime
import os
from pathlib import Path
from typing import Any

from torch import nn

from visionssl.zoo.catalog import (
    PACKAGED_ZOO,
    ZooEntry,
    ZooError,
    all_entries,
    env_zoo_paths,
    filter_names,
    get_entry,
    save_entry,
    user_zoo_path,
    zoo_files,
)
from visionssl.zoo.convert import (
    CONVERTERS,
    convert_checkpoint,
    list_formats,
    load_file,
    load_strict,
    read_checkpoint,
    register_converter,
)
from visionssl.zoo.download import (
    DEFAULT_TIMEOUT,
    UnverifiedDownloadWarning,
    cache_dir,
    cached_path,
    fetch,
    local_path,
)
from visionssl.zoo.export import ExportedModel, HubExport, export_hub, export_run
from visionssl.zoo.integrity import check_hash, read_sidecar, sha256_file
from visionssl.zoo.resolve import (
    CheckpointSource,
    checkpoint_file,
    init_weights,
    load,
    resolve_checkpoint,
    safetensors_backbone,
)

__all__ = [
    "CONVERTERS",
    "CheckpointSource",
    "ExportedModel",
    "HubExport",
    "UnverifiedDownloadWarning",
    "ZooEntry",
    "ZooError",
    "all_entries",
    "cache_dir",
    "cached_path",
    "checkpoint_file",
    "convert_checkpoint",
    "download",
    "export_hub",
    "export_run",
    "fetch",
    "info",
    "init_weights",
    "list",
    "list_formats",
    "load",
    "load_backbone",
    "load_file",
    "load_strict",
    "markdown_table",
    "pin",
    "read_checkpoint",
    "register_converter",
    "resolve_checkpoint",
    "safetensors_backbone",
    "sha256_file",
    "verify",
    "zoo_files",
]


def list(pattern: str = "*") -> builtins.list[str]:  # noqa: A001  (vs.zoo.list is the documented name)
    """Names of the zoo entries matching a shell-style wildcard ``pattern``.

    Example:
        >>> import visionssl as vs
        >>> vs.zoo.list("vicreg*")
        ['vicreg_rn50_1000ep']
    """
    return filter_names(all_entries(), pattern)


def info(name: str) -> ZooEntry:
    """The zoo entry ``name`` (URLs, sha256, format, recipe, reported metrics, paper, licence).

    Example:
        >>> import visionssl as vs
        >>> vs.zoo.info("moco_v3_rn50_1000ep").recipe["batch_size"]
        4096
    """
    return get_entry(name)


def download(
    name: str,
    *,
    offline: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    force: bool = False,
    total_timeout: float | None = None,
) -> Path:
    """Downloads (if needed) and verifies the checkpoint file of ``name``; returns its local path.

    Args:
        name: a zoo entry name (``vs.zoo.list()``).
        offline: use only the cache and local files (default: ``VISIONSSL_OFFLINE``).
        timeout: idle limit: seconds with less than 1 KiB from a server before trying the next mirror.
        progress: show a progress bar.
        force: download again even if the file is cached.
        total_timeout: seconds one mirror's whole download may take (None: no limit).
    """
    return fetch(
        get_entry(name), offline=offline, timeout=timeout, progress=progress, force=force, total_timeout=total_timeout
    )


def verify(name: str) -> str:
    """Re-hashes the local file of ``name`` (cached or local path) and checks it; returns its sha256.

    Raises ``ZooError`` if the file is missing or its hash disagrees with the zoo. For an entry
    without a sha256 the hash is returned unchecked (``pin`` records it).
    """
    entry = get_entry(name)
    candidates = [cached_path(entry)] + [p for p in map(local_path, entry.urls) if p is not None]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ZooError(
            f"{name} is not downloaded (no file at {cached_path(entry)}); run `visionssl zoo download {name}`"
        )
    digest = sha256_file(path)
    recorded = read_sidecar(path) if path == cached_path(entry) else None
    if entry.sha256 is None and recorded is not None and digest != recorded:
        raise ZooError(
            f"{path}: sha256 {digest} differs from the one recorded when it was downloaded ({recorded}); "
            f"the file changed. Replace it with `visionssl zoo download {name} --force`."
        )
    try:
        check_hash(path, digest, entry, source=str(path))
    except ZooError as exc:
        raise ZooError(f"{exc} Replace it with `visionssl zoo download {name} --force`.") from None
    return digest


def pin(name: str, *, file: str | os.PathLike | None = None, **download_kwargs: Any) -> tuple[str, Path | None]:
    """Records the sha256 of ``name``'s file in a user zoo file (trust on first use); returns it and the file.

    The file is downloaded first if needed. The packaged ``model_zoo.yaml`` is never rewritten: the
    pinned copy of the entry goes to ``file`` if given, else the zoo file the entry came from if it
    is a user file, else the first ``VISIONSSL_ZOO`` file, else ``$VISIONSSL_HOME/zoo.yaml``; it
    overrides the packaged entry by name. An entry that already has a sha256 is left alone (the
    file is returned as ``None``).
    """
    entry = get_entry(name)
    if entry.sha256 is not None:
        return entry.sha256, None
    path = fetch(entry, **download_kwargs)
    digest = verify(name)
    if file is None:
        user_origin = Path(entry.origin) if Path(entry.origin).resolve() != PACKAGED_ZOO.resolve() else None
        env = env_zoo_paths()
        file = user_origin or (env[0] if env else user_zoo_path())
    pinned = entry.to_dict()
    pinned.update(sha256=digest, size=path.stat().st_size)
    pinned["note"] = (f"{entry.note} " if entry.note else "") + (
        f"sha256 recorded by `visionssl zoo pin` on {datetime.date.today()}: trust on first use, "
        f"not a checksum published upstream."
    )
    return digest, save_entry(pinned, file)


def load_backbone(
    spec: str | os.PathLike, *, unsafe: bool = False, offline: bool | None = None, trust_code: bool = False
) -> nn.Module:
    """A backbone from a zoo name, an exported ``.safetensors`` file, or a visionssl checkpoint / run directory.

    This is what every CLI ``--checkpoint`` option accepts (``resolve_checkpoint`` says which it is). The
    backbone a file names must be a registered or timm model unless ``trust_code=True`` (or your own run
    directory vouched for it, see ``visionssl.backbones.trust``).

    Example:
        >>> import visionssl as vs
        >>> vs.zoo.load_backbone("no_such_model_or_file")
        Traceback (most recent call last):
        ...
        visionssl.errors.ZooError: no zoo entry named 'no_such_model_or_file'; known: ...
    """
    return resolve_checkpoint(spec, trust_code=trust_code).build(offline=offline, unsafe=unsafe)


def markdown_table() -> str:
    """The zoo as a Markdown table (name, method, backbone, reported metric, source) for the README.

    Example:
        >>> print(markdown_table().splitlines()[0])
        | Name | Method | Backbone | Epochs | Reported metric | Source |
    """
    rows = ["| Name | Method | Backbone | Epochs | Reported metric | Source |", "|---|---|---|---|---|---|"]
    for entry in sorted(all_entries().values(), key=lambda e: e.name):
        metric = entry.metrics[0] if entry.metrics else None
        shown = f"{metric['name']}: {metric['value']}" if metric else "n/a"
        source = metric["source"] if metric else (entry.paper or "")
        link = f"[link]({source})" if source.startswith("http") else source
        epochs = entry.recipe.get("epochs")
        rows.append(
            f"| `{entry.name}` | {entry.method} | {entry.backbone} | {epochs if epochs is not None else '?'} "
            f"| {shown} | {link} |"
        )
    return "\n".join(rows)
