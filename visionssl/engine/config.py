"""The run configuration: typed defaults, per-method YAML recipes, command-line overrides.

Resolution order (later wins): the defaults below -> the method's recipe
(``visionssl/configs/<method>.yaml``, or ``--config FILE``) -> ``key=value`` overrides.

Example:
    >>> cfg = load_config("simclr", overrides=["train.epochs=3", "optim.lr=0.5"])
    >>> cfg.train.epochs, cfg.optim.lr, cfg.method.name
    (3, 0.5, 'simclr')
"""

from __future__ import annotations

import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from visionssl.engine.config_checks import (  # noqa: F401  (re-exported: the checks once lived here)
    CHOICES,
    HPARAM_RANGES,
    max_threads,
    validate,
)
from visionssl.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MAX_DEPTH = 32  # lists/maps nested in a config file or an override value (OmegaConf recursed to death at ~100)
KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")  # an override's key: optim.lr, backbone.kwargs.drop_rate, optim.betas.0
MAX_FILE_BYTES = 1_000_000  # a config file; the recipes are about 2 kB


@dataclass
class BackboneConfig:
    name: str = "resnet18_cifar"  # a registered backbone, a timm model, or package.module:function
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the factory / timm.create_model
    # starting weights: random | timm (the timm model's own, from the local cache) | a zoo name | a .safetensors
    # file, hub folder, run directory or .pt checkpoint (docs/init.md); a resumed run keeps its checkpoint's
    init: str = "random"
    init_sha256: str | None = None  # the sha256 of the init file, recorded by the run; set by hand it pins the file


@dataclass
class AugmentConfig:
    name: str | None = None  # preset; None: the method's own
    image_size: int = 32  # side of the views fed to the backbone
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = "elpv"  # dataset spec (see visionssl.data.load_dataset)
    image_size: int | None = 36  # side of the uint8 images kept in memory (None: native)
    skip_bad_images: bool = False  # skip unreadable files (reported) instead of stopping
    eval: str | None = None  # labelled dataset for online kNN (None: the train/test splits of `name`)
    stream: bool = (
        False  # an image folder too large for memory: CPU workers decode + crop each batch (image_size unused)
    )
    workers: int | None = None  # with stream: decoding processes (None: every core)
    gpu_decode: bool = False  # with stream on CUDA: decode JPEGs on the GPU (nvJPEG)


@dataclass
class OptimConfig:
    name: str = "lars"  # sgd | lars | adamw
    lr: float = 1.0  # base learning rate for batch size 256 (see lr_scaling)
    lr_scaling: str = "linear"  # linear (lr x batch/256) | sqrt | none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    trust_coefficient: float = 0.001  # LARS: the paper's 0.001 for large batches, ~0.02 for small ones
    batch_size: int = 256  # the GLOBAL batch: under torchrun each of the N processes takes batch_size / N
    warmup_epochs: float = 10.0  # linear warmup, then cosine decay
    final_lr_ratio: float = 0.0  # the cosine schedule ends at lr x final_lr_ratio
    grad_clip: float | None = None  # max gradient norm (None: no clipping)


@dataclass
class TrainConfig:
    epochs: int = 100
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with hardware bf16, else fp32) | fp32 | bf16 | fp16
    deterministic: bool = False  # bit-identical runs (slower on GPU)
    compile: bool = False  # torch.compile the method
    channels_last: bool = True  # channels-last tensors (faster convolutions on CUDA and on the CPU)
    log_every: int = 10  # steps between logged metrics (the only host synchronisations)
    knn_every: int = 1  # epochs between online kNN evaluations (0: only at the end, -1: never)
    knn_k: int = 200
    knn_temperature: float = 0.07
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    on_nonfinite: str = (
        "stop"  # NaN/inf loss or gradients -> stop: end the run (last good checkpoint kept) | skip the step
    )
    max_skipped_steps: int = 10  # with on_nonfinite=skip: stop after more than this many skipped steps in a row
    min_loss_scale: float = 1e-4  # with precision=fp16: warn when the GradScaler's scale falls below this (underflow)
    num_threads: int | None = None  # CPU threads for torch (None: torch's default)
    progress: bool = True  # progress bar
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    find_unused_parameters: bool = False  # DDP: only for a method whose forward leaves some parameters unused
    precise_bn: bool = (
        False  # re-estimate the backbone's BatchNorm statistics on whole images before kNN and the last checkpoint
    )


@dataclass
class Config:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})  # name + its hyperparameters
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None  # run directory


def recipe_path(name: str) -> Path:
    """A recipe by name (``simclr``, ``simclr_imagenet``) or path; raises listing the recipes."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        close = difflib.get_close_matches(name, valid, n=3)
        raise ConfigError(
            f"unknown recipe {name!r}; "
            + (f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(valid)}")
        )
    return path


def list_recipes() -> list[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(
    method: str | None = None, config: str | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> DictConfig:
    """Builds, validates and resolves a run config (see the module docstring for the order).

    A config file may refer to other keys (``${train.epochs}``) but never call a resolver (``${oc.env:HOME}``):
    a shared file must not read the environment. The returned config holds values, no interpolations.
    Raises ``ConfigError`` with one line naming the key and the valid choices.

    Example:
        >>> load_config("simclr", overrides=["train.knn_every=${train.epochs}", "train.epochs=4"]).train.knn_every
        4
    """
    cfg = OmegaConf.structured(Config)
    source = config or method
    try:
        if source is not None:
            try:
                cfg = _merge(cfg, read_config_file(recipe_path(source)))
            except ConfigError:
                if config is not None or method is None:
                    raise
                cfg.method = {"name": method}  # a method without a recipe of its own (e.g. a plugin)
        if method is not None and cfg.method.get("name") != method:
            cfg.method = {"name": method}  # --method X with another method's --config: keep X's defaults
        if overrides:
            items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides)
            source = "the key=value overrides"
            for item in items:  # one by one: a later override may not turn an earlier one's list into a mapping
                _check_override(item)
                cfg = _merge(cfg, OmegaConf.from_dotlist([item]))
        validate(cfg)  # inside: reading a value resolves interpolations (${...}), which may fail
        OmegaConf.resolve(cfg)  # the run (config.yaml, checkpoints) keeps values, not references
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc)) from None
    except yaml.YAMLError as exc:  # a hand-edited or damaged YAML file
        raise ConfigError(f"{source}: not valid YAML ({_yaml_where(exc)})") from None
    return cfg


def read_config_file(path: str | Path) -> DictConfig:
    """A YAML config file as a ``DictConfig``, unresolved; ``ConfigError`` for anything a config file cannot be.

    Refused: more than 1 MB, not UTF-8, not a mapping, lists/maps nested more than ``MAX_DEPTH`` deep, and any
    resolver interpolation (``${oc.env:HOME}``, ``${oc.decode:...}``, a plugin's): files are data.

    Example:
        >>> read_config_file(recipe_path("simclr")).method.name
        'simclr'
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a config file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a YAML config file (not UTF-8 text: {exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if _check_depth(text, str(path)) not in (None, yaml.MappingStartEvent):
        raise ConfigError(f"{path}: a config file must be a mapping of keys (e.g. 'train: {{epochs: 3}}')")
    node = OmegaConf.load(io.StringIO(text))  # the text checked above, with OmegaConf's own YAML rules
    _refuse_resolvers(OmegaConf.to_container(node, resolve=False), str(path))
    return node


def _merge(cfg: DictConfig, other: DictConfig) -> DictConfig:
    """``OmegaConf.merge`` after checking that no list replaces a mapping or the other way round (a bare
    ``TypeError`` inside OmegaConf)."""
    _check_shapes(OmegaConf.to_container(cfg, resolve=False), OmegaConf.to_container(other, resolve=False))
    return OmegaConf.merge(cfg, other)  # type: ignore[return-value]


def _check_shapes(base: Any, other: Any, key: str = "") -> None:
    if not isinstance(base, dict) or not isinstance(other, dict):
        return
    for k, value in other.items():
        if k not in base:
            continue
        default, where = base[k], f"{key}.{k}" if key else str(k)
        if isinstance(default, dict) and isinstance(value, list):
            raise ConfigError(f"{where}={value!r} must be a mapping (key: value), not a list")
        if isinstance(default, (list, tuple)) and isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a list, not a mapping")
        _check_shapes(default, value, where)


def _check_depth(text: str, where: str) -> type[yaml.Event] | None:
    """Refuses YAML nested deeper than ``MAX_DEPTH``, reading the event stream (which does not recurse).

    Returns the event type of the top-level node (None for an empty text).
    """
    depth, top = 0, None
    for event in yaml.parse(text):
        if isinstance(event, yaml.NodeEvent) and top is None:
            top = type(event)
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: lists or mappings nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return top


def _check_override(item: str) -> None:
    """One ``key=value`` override: its form, its text and its nesting (before OmegaConf parses it)."""
    key, eq, value = item.partition("=")
    if not eq:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.5)")
    if not KEY.fullmatch(key):
        raise ConfigError(f"override {item!r}: {key!r} is not a config key (dotted names, e.g. optim.lr=0.5)")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:  # e.g. a path whose bytes are not UTF-8: YAML and config.yaml cannot hold it
        raise ConfigError(
            f"{key}={value!r}: not valid UTF-8 text; a run config holds text only (rename the file or folder, "
            "or link it under a UTF-8 name)"
        ) from None
    try:
        _check_depth(value, f"{key}={value[:20]!r}{'...' if len(value) > 20 else ''}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}={value!r}: not valid YAML ({_yaml_where(exc)})") from None


def _refuse_resolvers(node: Any, prefix: str, key: str = "") -> None:
    """``ConfigError`` naming the key of the first ``${resolver:...}`` interpolation in a file's values."""
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_resolvers(v, prefix, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_resolvers(v, prefix, f"{key}.{i}")
    elif isinstance(node, str) and "${" in node:
        stack = [grammar_parser.parse(node)]  # OmegaConf's own grammar: escapes and nesting as it reads them
        while stack:
            tree = stack.pop()
            if isinstance(tree, OmegaConfGrammarParser.InterpolationResolverContext):
                raise ConfigError(
                    f"{prefix}: {key}={node!r} calls the resolver {tree.getText()!r}; a config file may refer to "
                    "other keys (${train.epochs}) but not call resolvers (give the value itself, or pass it as "
                    "a key=value override)"
                )
            stack.extend(tree.getChildren() if hasattr(tree, "getChildren") else [])


def _yaml_where(exc: yaml.YAMLError) -> str:
    return " ".join(str(exc).split())


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain, YAML-able dict of a config."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _explain(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if "Key '" in msg and "not in" in msg:  # unknown key: suggest the closest valid one
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(OmegaConf.structured(Config), parent) if parent else OmegaConf.structured(Config)
        valid = list(node.keys()) if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f"did you mean {(parent + '.' if parent else '') + close[0]!r}? " if close else ""
        return f"unknown config key {key!r}; {hint}valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"
    return f"config key {key!r}: {msg}" if key else msg
