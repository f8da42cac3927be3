"""timm's Hugging Face folder convention: what ``export_hub`` writes and how zoo entries point at such folders.

A hub folder holds ``config.json`` (``architecture``, ``num_classes``, ``num_features``, ``model_args`` and a
``pretrained_cfg`` with the preprocessing), ``model.safetensors`` (timm's keys) and a ``README.md`` model
card. timm 1.0 builds it with ``timm.create_model("local-dir:DIR", pretrained=True)``, or, once uploaded,
``"hf-hub:org/name"``. A zoo entry's ``urls`` may name such a folder (``local-dir:PATH`` or a plain path to
it: its ``model.safetensors`` is used in place) or ``hf-hub:org/name[@revision]`` (its ``model.safetensors``
is downloaded from ``$HF_ENDPOINT``, default https://huggingface.co, through the zoo's bounded and verified
download).

Example:
    >>> hub_download_url("hf-hub:acme/rn50-ssl@v1")
    'https://huggingface.co/acme/rn50-ssl/resolve/v1/model.safetensors'
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote

from torch import nn

from visionssl.errors import ConfigError, StorageError
from visionssl.files import atomic_write, file_mode

WEIGHTS_NAME = "model.safetensors"
HUB_FILES = ("config.json", WEIGHTS_NAME, "README.md")
HUB_SCHEMES = ("local-dir:", "hf-hub:")
HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# what a fresh timm model's own pretrained_cfg may keep: facts about the architecture, not about its weights
ARCHITECTURE_KEYS = ("fixed_input_size", "first_conv", "classifier", "pool_size")


def timm_config(net: nn.Module, model_args: Mapping[str, Any], *, image_size: int) -> dict[str, Any]:
    """timm's ``config.json`` for backbone ``net`` (a timm model built by visionssl, ``num_classes=0``).

    The preprocessing is visionssl's evaluation view of the run: the whole image resized to
    ``image_size`` (bilinear, no crop: ``crop_pct`` 1.0, ``crop_mode`` squash) and normalised with the
    statistics visionssl's views use for the backbone's input channels.

    Example:
        >>> import visionssl as vs
        >>> cfg = timm_config(vs.create_backbone("resnet10t"), {}, image_size=32)
        >>> cfg["architecture"], cfg["num_classes"], cfg["num_features"], cfg["pretrained_cfg"]["input_size"]
        ('resnet10t', 0, 512, [3, 32, 32])
    """
    from visionssl.augment import create
    from visionssl.backbones.features import input_channels

    channels = input_channels(net)
    normalize = create("eval", image_size=image_size, channels=channels).normalize
    mean, std = normalize.mean.flatten(), normalize.std.flatten()
    if channels == 1:  # visionssl's Normalize averages the statistics for one-channel images
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    default = dict(net.pretrained_cfg)
    pretrained_cfg = {k: default[k] for k in ARCHITECTURE_KEYS if k in default}
    if list(default.get("input_size", ())[1:]) != [image_size, image_size]:
        pretrained_cfg["pool_size"] = None  # the architecture's pool size holds for its default input size only
    pretrained_cfg.update(
        input_size=[channels, image_size, image_size],
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="squash",
        mean=[round(float(v), 6) for v in mean],
        std=[round(float(v), 6) for v in std],
        num_classes=0,
        custom_load=False,  # timm's own keys: no architecture-specific loader
    )
    config: dict[str, Any] = {
        "architecture": default["architecture"],
        "num_classes": 0,
        "num_features": int(net.num_features),
    }
    if model_args:
        config["model_args"] = dict(model_args)
    config["pretrained_cfg"] = pretrained_cfg
    return config


def check_out_dir(out: Path, *, overwrite: bool) -> None:
    """Refuses an ``out`` folder that is a link, a file, or a non-empty folder without ``overwrite``.

    Example:
        >>> import tempfile
        >>> check_out_dir(Path(tempfile.mkdtemp()), overwrite=False)  # an empty folder is fine
        >>> check_out_dir(Path(__file__), overwrite=True)
        Traceback (most recent call last):
        ...
        visionssl.errors.ConfigError: --out .../hub.py is a file; a hub export writes a folder (config.json, model.safetensors, README.md): name a new or empty folder
    """
    if out.is_symlink():
        raise StorageError(
            errno.ELOOP, f"refusing to write {out}: it is a symbolic link (to {os.readlink(out)}); name a real folder"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file; a hub export writes a folder ({', '.join(HUB_FILES)}): name a new or empty folder"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out} is a folder that is not empty; pass --overwrite (overwrite=True) to replace it, "
            f"or name a new folder"
        )


def write_folder(
    out: str | os.PathLike,
    files: Mapping[str, bytes | str | Callable[[IO[bytes]], Any]],
    *,
    overwrite: bool = False,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Writes ``files`` (name -> content, as ``atomic_write`` takes) as the folder ``out``, all or nothing.

    The files go to a hidden folder beside ``out``; ``check(folder)`` runs on it, and only then it is
    renamed to ``out``. An ``out`` holding files is replaced only with ``overwrite``, and its old content is
    deleted only after the new folder is in place. A link at ``out`` is refused, never written through.

    Example:
        >>> import tempfile
        >>> out = write_folder(Path(tempfile.mkdtemp()) / "card", {"README.md": "# hello"})
        >>> sorted(p.name for p in out.iterdir()), (out / "README.md").read_text()
        (['README.md'], '# hello')
    """
    out = Path(out)
    check_out_dir(out, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:  # a file where a parent folder should be, no permission, a read-only disk
        raise StorageError(
            exc.errno, f"cannot create the folder {out}: {exc.strerror or exc} ({exc.filename})"
        ) from None
    old = None
    try:
        mode = file_mode()
        os.chmod(staging, mode | (mode & 0o444) >> 2)  # a folder the user can enter where they can read
        for name, content in files.items():
            atomic_write(staging / name, content)
        if check is not None:
            check(staging)
        check_out_dir(out, overwrite=overwrite)  # again: it may have changed while the files were written
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # an empty folder is replaced by the rename itself
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the old folder back
        raise
    if old is not None:
        shutil.rmtree(old)
    return out


def resolve_hub_url(url: str, base: Path, fail: Callable[[str, str], NoReturn]) -> str:
    """A zoo URL ``local-dir:PATH`` (made absolute, relative to ``base``) or ``hf-hub:org/name[@rev]`` (checked).

    ``fail(field, problem)`` reports a bad one (the zoo reader's error).

    Example:
        >>> resolve_hub_url("local-dir:models/mine", Path("/zoo"), print)
        'local-dir:/zoo/models/mine'
        >>> resolve_hub_url("hf-hub:acme/rn50-ssl", Path("/zoo"), print)
        'hf-hub:acme/rn50-ssl'
    """
    if "\0" in url:
        fail("urls", f"has a NUL character in {url!r}; no folder or name holds one")
    if url.startswith("local-dir:"):
        path = url[len("local-dir:") :]
        if not path.strip():
            fail("urls", f"has {url!r}, which names no folder (write local-dir:path/to/folder)")
        return "local-dir:" + str((base / os.path.expanduser(path)).resolve())
    if not HF_REPO.match(url[len("hf-hub:") :]):
        fail("urls", f"has {url!r}; a Hugging Face name is hf-hub:org/name or hf-hub:org/name@revision")
    return url


def hub_weights(url: str) -> Path:
    """The ``model.safetensors`` of a ``local-dir:`` URL's folder.

    Example:
        >>> hub_weights("local-dir:/models/mine")
        PosixPath('/models/mine/model.safetensors')
    """
    return Path(url[len("local-dir:") :]).expanduser() / WEIGHTS_NAME


def hub_download_url(url: str) -> str:
    """The download URL of an ``hf-hub:org/name[@rev]`` entry's ``model.safetensors``; other URLs unchanged.

    ``$HF_ENDPOINT`` (a mirror) replaces https://huggingface.co, as in ``huggingface_hub``.

    Example:
        >>> hub_download_url("hf-hub:acme/rn50-ssl"), hub_download_url("https://x.org/w.pth")
        ('https://huggingface.co/acme/rn50-ssl/resolve/main/model.safetensors', 'https://x.org/w.pth')
    """
    if not url.startswith("hf-hub:"):
        return url
    repo, _, revision = url[len("hf-hub:") :].partition("@")
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"
    return f"{endpoint}/{repo}/resolve/{quote(revision or 'main', safe='')}/{WEIGHTS_NAME}"


def model_card(
    *,
    name: str,
    config: Mapping[str, Any],
    epoch: Any,
    timm_cfg: Mapping[str, Any],
    sha256: str,
    metrics: list[dict],
    license: str | None = None,  # noqa: A002  (the model card's field name)
) -> str:
    """The ``README.md`` of a hub folder: a Hugging Face model card (YAML header) for the run ``config``.

    ``metrics`` are ``{"name", "value"}`` records: the run's kNN / linear-probe results (the card states the
    online kNN's protocol: k, temperature, data and view size from the run's config).

    Example:
        >>> card = model_card(name="demo", config={"method": {"name": "simclr"}}, epoch=2, sha256="0" * 64,
        ...     timm_cfg={"architecture": "resnet10t", "num_features": 512, "pretrained_cfg": {}}, metrics=[])
        >>> card.splitlines()[1], card.splitlines()[7]
        ('license: unknown', '# demo')
    """
    section = {k: dict(config.get(k) or {}) for k in ("method", "backbone", "data", "optim", "train", "augment")}
    method = section["method"].pop("name", None) or "unknown"
    hparams = ", ".join(f"{k}={v}" for k, v in section["method"].items()) or "its defaults"
    arch, cfg = timm_cfg["architecture"], timm_cfg.get("pretrained_cfg", {})
    data, train, optim = section["data"], section["train"], section["optim"]
    size = (cfg.get("input_size") or [None, "?", "?"])[1:]
    pre = (
        f"whole image resized to {size[0]}x{size[1]} ({cfg.get('interpolation')}, no crop), "
        f"mean {cfg.get('mean')}, std {cfg.get('std')}"
    )
    rows = [
        ("method", f"{method} ({hparams})"),
        ("backbone", f"timm `{arch}`{_args(timm_cfg.get('model_args'))}, {timm_cfg.get('num_features')} features"),
        ("data", f"{data.get('name')} (images kept at {data.get('image_size')} px, views {size[0]} px)"),
        ("epochs", f"{epoch} (of {train.get('epochs', '?')} planned)"),
        ("batch size", f"{optim.get('batch_size')} (global)"),
        ("optimizer", _known(optim.get("name"), lr_per_256=optim.get("lr"), weight_decay=optim.get("weight_decay"))),
        ("preprocessing", pre),
        ("weights", f"`{WEIGHTS_NAME}`, sha256 `{sha256}`"),
    ]
    knn = _known(k=train.get("knn_k"), T=train.get("knn_temperature"), views=f"{size[0]} px")
    protocol = (
        f"online kNN of the pretraining run (visionssl): FAISS on L2-normalised features of "
        f"{data.get('eval') or data.get('name')} ({knn}), at the last logged epoch"
    )
    other = "logged by the pretraining run at its last epoch"
    results = [f"| {m['name']} | {m['value']:.2f} | {protocol if 'knn' in m['name'] else other} |" for m in metrics]
    tag = "-".join(re.findall(r"[a-z0-9]+", method.lower())) or "self-supervised"
    lines = [
        "---",
        f"license: {license or 'unknown'}",
        "library_name: timm",
        "pipeline_tag: image-feature-extraction",
        f"tags: [image-feature-extraction, timm, visionssl, self-supervised-learning, {tag}]",
        "---",
        "",
        f"# {name}",
        "",
        f"A `{arch}` backbone pretrained with {method} (self-supervised: no labels) by visionssl. "
        "It has no classifier (`num_classes=0`): it maps an image to a feature vector.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Results",
        "",
        *(
            ["| metric | value | protocol |", "|---|---|---|", *results]
            if results
            else ["The run recorded no kNN or linear-probe result (unlabelled data, or its evaluation was off)."]
        ),
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        f'model = timm.create_model("local-dir:{name}", pretrained=True, num_classes=0).eval()  # this folder',
        '# once uploaded: timm.create_model("hf-hub:ORG/NAME", pretrained=True, num_classes=0)',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        "",
        "import visionssl as vs",
        f'backbone = vs.zoo.load_backbone("{name}/{WEIGHTS_NAME}").eval()',
        "```",
        "",
        "## License",
        "",
        f"{license + '.' if license else 'Not stated: set it before publishing.'} The license of the training data applies too.",
        "",
    ]
    return "\n".join(lines)


def _known(*words: Any, **values: Any) -> str:
    """The words and ``key=value`` pairs that are known (not None), comma-separated."""
    known = [str(w) for w in words if w is not None] + [f"{k}={v}" for k, v in values.items() if v is not None]
    return ", ".join(known) or "not recorded"


def _args(model_args: Mapping[str, Any] | None) -> str:
    return f" ({', '.join(f'{k}={v!r}' for k, v in model_args.items())})" if model_args else ""
