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
import fnmatch
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from visionssl.engine.optim import OPTIMIZERS
from visionssl.errors import ConfigError  # noqa: F401  (re-exported: the config's errors)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class BackboneConfig:
    name: str = "resnet18_cifar"  # a registered backbone, a timm model, or package.module:function
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the factory / timm.create_model


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


CHOICES = {
    "optim.name": OPTIMIZERS,
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.on_nonfinite": ("stop", "skip"),
}


# Valid ranges of method hyperparameters, by name (shell patterns; the first match wins). A method may
# declare its own in a class attribute ``hparam_ranges`` (same form), which comes first. A range is
# (low, high, low_inclusive); None is unbounded. Every number must also be finite.
HPARAM_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "*temperature": (0, None, False),
    "*momentum": (0, 1, True),
    "*seed": (0, None, True),
    "*_weight": (0, None, True),
    "*_ratio": (0, None, True),
    "*_dim": (1, None, True),
    "*_layers": (1, None, True),
    "*_size": (1, None, True),
    "num_*": (1, None, True),
    "*_every": (1, None, True),
    "*_iters": (1, None, True),
    "grid": (1, None, True),
    "gap": (0, None, True),
    "jitter": (0, None, True),
}


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
    """Builds and validates a run config (see the module docstring for the order).

    Raises ``ConfigError`` with one line naming the key and the valid choices.
    """
    cfg = OmegaConf.structured(Config)
    source = config or method
    try:
        if source is not None:
            try:
                cfg = OmegaConf.merge(cfg, OmegaConf.load(recipe_path(source)))
            except ConfigError:
                if config is not None or method is None:
                    raise
                cfg.method = {"name": method}  # a method without a recipe of its own (e.g. a plugin)
        if method is not None and cfg.method.get("name") != method:
            cfg.method = {"name": method}  # --method X with another method's --config: keep X's defaults
        if overrides:
            items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides)
            for item in items:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.5)")
            source = "the key=value overrides"
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(items))
        validate(cfg)  # inside: reading a value resolves interpolations (${...}), which may fail
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc)) from None
    except yaml.YAMLError as exc:  # a hand-edited or damaged YAML file
        where = " ".join(str(exc).split())
        raise ConfigError(f"{source}: not valid YAML ({where})") from None
    return cfg


def validate(cfg: DictConfig) -> None:
    """Range and choice checks that types alone cannot express; method hyperparameter names."""
    from visionssl.methods import METHODS, method_class, method_hparams

    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(valid)}")
    checks = [
        ("train.epochs", cfg.train.epochs >= 1, "must be >= 1"),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.batch_size", cfg.optim.batch_size >= 2, "must be >= 2 (contrastive losses need pairs)"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs >= 0, "must be >= 0"),
        ("augment.image_size", cfg.augment.image_size >= 8, "must be >= 8 pixels"),
        ("train.log_every", cfg.train.log_every >= 1, "must be >= 1"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, "must be >= 1"),
        ("train.knn_k", cfg.train.knn_k >= 1, "must be >= 1"),
        ("train.knn_temperature", cfg.train.knn_temperature > 0, "must be > 0"),
        ("train.max_skipped_steps", cfg.train.max_skipped_steps >= 0, "must be >= 0"),
        ("train.min_loss_scale", cfg.train.min_loss_scale > 0, "must be > 0"),
        (
            "train.num_threads",
            cfg.train.num_threads is None or cfg.train.num_threads >= 1,
            "must be >= 1 (or null: torch's default)",
        ),
        ("optim.momentum", 0 <= cfg.optim.momentum < 1, "must be in [0, 1)"),
        ("optim.final_lr_ratio", 0 <= cfg.optim.final_lr_ratio <= 1, "must be in [0, 1]"),
        (
            "optim.grad_clip",
            cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0,
            "must be > 0 (or null: no clipping)",
        ),
        ("optim.trust_coefficient", cfg.optim.trust_coefficient > 0, "must be > 0"),
        ("optim.betas", all(0 <= b < 1 for b in cfg.optim.betas), "must be two numbers in [0, 1)"),
        (
            "train.num_threads",
            cfg.train.num_threads is None or cfg.train.num_threads <= max_threads(),
            f"must be between 1 and {max_threads()} (this machine has {os.cpu_count()} CPUs; or null: torch's default)",
        ),
    ]
    for key, value in _numbers(to_dict(cfg)):  # one check for every number: inf/nan is never a valid setting
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} {rule}")
    if cfg.data.image_size is not None and cfg.data.image_size < 1:
        raise ConfigError(f"data.image_size={cfg.data.image_size} must be a positive number of pixels")
    backbone = cfg.backbone.name
    if ":" not in backbone:
        import timm

        from visionssl.backbones import BACKBONES

        if backbone not in BACKBONES and not timm.is_model(backbone):
            raise ConfigError(f"backbone.name: {BACKBONES.unknown_message(backbone, extra=timm.list_models())}")
    name = cfg.method.get("name")
    if name not in METHODS:
        raise ConfigError(f"method.name: {METHODS.unknown_message(str(name))}")
    valid = method_hparams(name)
    for key in cfg.method:
        if key != "name" and key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"method.{key}: {name} has no such hyperparameter; {hint}valid: {', '.join(valid)}")
    hparams = {**valid, **{k: v for k, v in to_dict(cfg.method).items() if k != "name"}}
    ranges = [*method_class(name).hparam_ranges.items(), *HPARAM_RANGES.items()]
    for key, value in hparams.items():
        _check_hparam_type(name, key, value, valid[key])
        _check_hparam_range(name, key, value, ranges)
    try:  # the method's own cross-checks (e.g. MoCo's queue against the batch size)
        method_class(name).check_config(hparams, cfg)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


def _check_hparam_type(method: str, key: str, value: Any, default: Any) -> None:
    """A hyperparameter given in YAML or on the command line must have its default's type."""
    if default is None or value is None or isinstance(default, (list, tuple, dict)):
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise ConfigError(
            f"method.{key}={value!r} must be of type {type(default).__name__} ({method}'s default: {default!r})"
        )


def max_threads() -> int:
    """The most CPU threads a run may ask for: 256, or 4 x this machine's CPUs if more (100,000 crashes torch)."""
    return max(256, 4 * (os.cpu_count() or 1))


def _numbers(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every float in a nested config (lists indexed as key.0, key.1, ...)."""
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _numbers(v, f"{prefix}{k}.")]
    if isinstance(node, (list, tuple)):
        return [kv for i, v in enumerate(node) for kv in _numbers(v, f"{prefix}{i}.")]
    return [(prefix[:-1], node)] if isinstance(node, float) else []


def _check_hparam_range(method: str, key: str, value: Any, ranges: list[tuple[str, tuple]]) -> None:
    """A numeric hyperparameter must lie in the range declared for its name (see ``HPARAM_RANGES``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"method.{key}={value} must be a finite number")
    rule = next((r for pattern, r in ranges if fnmatch.fnmatchcase(key, pattern)), None)
    if rule is None:
        return
    low, high, low_inclusive = rule
    if (low is not None and (value < low or (value == low and not low_inclusive))) or (
        high is not None and value > high
    ):
        lower = "" if low is None else f"{'>=' if low_inclusive else '>'} {low:g}"
        upper = "" if high is None else f"<= {high:g}"
        raise ConfigError(f"method.{key}={value} must be {' and '.join(x for x in (lower, upper) if x)} ({method})")


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
