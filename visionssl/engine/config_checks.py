"""The checks of a run config that its types cannot express: ranges, choices, devices, method hyperparameters.

``validate`` runs on every config ``load_config`` builds; ``check_run_settings`` on the few settings that
``visionssl eval`` reads from a checkpoint's stored config. Both raise ``ConfigError`` in one line that names
the key, the value and what would be valid.

Example:
    >>> check_device("cuda:1"), check_device("auto")
    ('cuda:1', 'auto')
    >>> check_device("meta")
    Traceback (most recent call last):
    visionssl.errors.ConfigError: train.device='meta' is not a device; valid: auto, cpu, cuda, cuda:N, mps
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from visionssl.backbones.file_kwargs import check_architecture_values
from visionssl.data.dataset import stored_size
from visionssl.engine.optim import OPTIMIZERS
from visionssl.errors import ConfigError

CHOICES = {
    "optim.name": OPTIMIZERS,
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.on_nonfinite": ("stop", "skip"),
}

MAX_IMAGE_SIZE = 4096  # augment.image_size; the recipes use at most 256 (a 4096 px view is already 200 MB a batch of 4)
MAX_STORED_SIZE = stored_size(MAX_IMAGE_SIZE)  # data.image_size: the images kept for views of MAX_IMAGE_SIZE
MAX_LR = 100.0  # the base lr for batch 256; the recipes use 1.5e-4 .. 1.0 (1e300 overflowed the float32 schedule)
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES = "auto, cpu, cuda, cuda:N, mps"

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


def validate(cfg: DictConfig) -> None:
    """Range and choice checks that types alone cannot express; method hyperparameter names.

    Example:
        >>> from visionssl.engine.config import load_config
        >>> validate(load_config("simclr"))
    """
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(valid)}")
    for key, value in _numbers(OmegaConf.to_container(cfg, resolve=True)):  # inf/nan is never a valid setting
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
    for key, ok, rule in _range_checks(cfg):
        if not ok:
            value = OmegaConf.select(cfg, key)  # a sequence shown as the list the user wrote, whatever OmegaConf keeps
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value  # 2.4: a TupleConfig
            shown = list(value) if isinstance(value, (tuple, list)) else value
            raise ConfigError(f"{key}={shown} {rule}")
    check_device(cfg.train.device)
    _check_backbone(cfg.backbone.name)
    _check_init(cfg.backbone)
    check_architecture_values(cfg.backbone.name, dict(cfg.backbone.kwargs or {}), source="backbone.kwargs")
    _check_method(cfg)
    _check_augment(cfg)


def _range_checks(cfg: DictConfig) -> list[tuple[str, bool, str]]:
    """(key, whether its value is valid, the rule) for every bounded top-level setting."""
    optim, train = cfg.optim, cfg.train
    threads = train.num_threads
    stored = cfg.data.image_size
    return [
        ("train.epochs", train.epochs >= 1, "must be >= 1"),
        ("optim.lr", 0 < optim.lr <= MAX_LR, f"must be > 0 and <= {MAX_LR:g} (the base learning rate for batch 256)"),
        ("optim.batch_size", optim.batch_size >= 2, "must be >= 2 (contrastive losses need pairs)"),
        ("optim.weight_decay", 0 <= optim.weight_decay <= 1, "must be in [0, 1]"),  # 1e300 overflowed in float32
        ("train.seed", 0 <= train.seed < 2**32, "must be between 0 and 2**32 - 1"),  # numpy's seeds
        ("train.knn_every", train.knn_every >= -1, "must be >= 1, or 0 (only at the end) or -1 (never)"),
        ("data.workers", cfg.data.workers is None or cfg.data.workers >= 0, "must be >= 0 (or null: every core)"),
        ("optim.warmup_epochs", optim.warmup_epochs >= 0, "must be >= 0"),
        ("augment.image_size", cfg.augment.image_size >= 8, "must be >= 8 pixels"),
        (
            "augment.image_size",
            cfg.augment.image_size <= MAX_IMAGE_SIZE,
            f"must be between 8 and {MAX_IMAGE_SIZE} pixels (--image-size)",
        ),
        (
            "data.image_size",
            stored is None or 1 <= stored <= MAX_STORED_SIZE,
            f"must be a positive number of pixels, at most {MAX_STORED_SIZE} (or null: the images' own size)",
        ),
        ("train.log_every", train.log_every >= 1, "must be >= 1"),
        ("train.checkpoint_every", train.checkpoint_every >= 1, "must be >= 1"),
        ("train.knn_k", train.knn_k >= 1, "must be >= 1"),
        ("train.knn_temperature", train.knn_temperature > 0, "must be > 0"),
        ("train.max_skipped_steps", train.max_skipped_steps >= 0, "must be >= 0"),
        ("train.min_loss_scale", train.min_loss_scale > 0, "must be > 0"),
        ("train.num_threads", threads is None or threads >= 1, "must be >= 1 (or null: torch's default)"),
        ("optim.momentum", 0 <= optim.momentum < 1, "must be in [0, 1)"),
        ("optim.final_lr_ratio", 0 <= optim.final_lr_ratio <= 1, "must be in [0, 1]"),
        ("optim.grad_clip", optim.grad_clip is None or optim.grad_clip > 0, "must be > 0 (or null: no clipping)"),
        ("optim.trust_coefficient", optim.trust_coefficient > 0, "must be > 0"),
        (
            "optim.betas",
            len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
            "must be two numbers in [0, 1)",
        ),
        (
            "train.num_threads",
            threads is None or threads <= max_threads(),
            f"must be between 1 and {max_threads()} (this machine has {os.cpu_count()} CPUs; or null: torch's default)",
        ),
    ]


def check_device(device: str, key: str = "train.device") -> str:
    """``device`` if it names a device a run can use (auto, cpu, cuda, cuda:N, mps); else ``ConfigError``."""
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise ConfigError(f"{key}={device!r} is not a device; valid: {DEVICES}")
    return device


def _check_backbone(backbone: str) -> None:
    if ":" in backbone:  # code: checked (and trusted or not) where it is built
        return
    import timm

    from visionssl.backbones import BACKBONES

    if backbone not in BACKBONES and not timm.is_model(backbone):
        raise ConfigError(f"backbone.name: {BACKBONES.unknown_message(backbone, extra=timm.list_models())}")


def _check_init(backbone: DictConfig) -> None:
    """``backbone.init``'s form (what it names is read where the run is built) and ``backbone.init_sha256``."""
    init, pin = backbone.init, backbone.init_sha256
    if not str(init).strip():
        raise ConfigError(
            "backbone.init='' is empty; valid: random, timm, a zoo name, or a .safetensors file, hub folder, "
            "run directory or .pt checkpoint"
        )
    if pin is not None and not re.fullmatch(r"[0-9a-f]{64}", str(pin)):
        raise ConfigError(f"backbone.init_sha256={pin!r} is not a sha256 (64 lowercase hex digits)")
    if init != "random" and (backbone.kwargs or {}).get("pretrained"):
        raise ConfigError(
            f"backbone.init={init} and backbone.kwargs.pretrained=true both give starting weights; "
            "for timm's own weights use backbone.init=timm (cache only, never a download) and drop pretrained"
        )
    name = str(backbone.name)
    if init == "timm":
        import timm

        from visionssl.backbones import BACKBONES

        if ":" in name or name in BACKBONES or not timm.is_model(name):
            raise ConfigError(
                f"backbone.init=timm loads a timm model's own pretrained weights, and {name!r} is not a timm model; "
                "use a timm backbone.name (e.g. resnet18) or another init (a zoo name, a .safetensors file, a run)"
            )


def _check_method(cfg: DictConfig) -> None:
    """The method exists, knows every hyperparameter given, each of its type and range; its own cross-checks."""
    from visionssl.methods import METHODS, method_class, method_hparams

    name = cfg.method.get("name")
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name: {METHODS.unknown_message(str(name))}")
    valid = method_hparams(name)
    for key in cfg.method:
        if key != "name" and key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"method.{key}: {name} has no such hyperparameter; {hint}valid: {', '.join(valid)}")
    given = OmegaConf.to_container(cfg.method, resolve=True)
    hparams = {**valid, **{k: v for k, v in given.items() if k != "name"}}
    contract = method_class(name)
    ranges = [*contract.hparam_ranges.items(), *HPARAM_RANGES.items()]
    factory = METHODS.get(name)
    params = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters
    choices = contract.hparam_choices
    for key, value in hparams.items():
        if key in choices and value not in choices[key] and not (value is None and valid[key] is None):
            raise ConfigError(f"method.{key}={value!r}: {name} takes one of {', '.join(choices[key])}")
        hint = params[key].annotation if key in params else inspect.Parameter.empty  # text under __future__
        nullable = hint is inspect.Parameter.empty or "None" in str(hint) or "Optional" in str(hint)
        _check_hparam_type(name, f"method.{key}", value, valid[key], nullable)
        _check_hparam_range(name, key, value, ranges)
    try:  # the method's own cross-checks (e.g. MoCo's queue against the batch size)
        contract.check_config(hparams, cfg)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


def check_run_settings(config: dict[str, Any], source: str) -> None:
    """The settings ``visionssl eval`` reads from a run's stored config (a checkpoint's ``config``) must be sane.

    Checks ``data.name``, ``data.eval`` (text or null) and ``data.image_size``, ``augment.image_size`` (whole
    numbers in range, or null); raises ``ConfigError`` naming ``source``, the key and the value.

    Example:
        >>> check_run_settings({"data": {"image_size": 36}, "augment": {"image_size": 32}}, "run/last.pt")
        >>> check_run_settings({"data": {"image_size": 100000}}, "run/last.pt")
        Traceback (most recent call last):
        visionssl.errors.ConfigError: run/last.pt: config data.image_size=100000 must be a whole number between 1 and 4608 (or null)
    """
    sizes = {"data.image_size": (1, MAX_STORED_SIZE), "augment.image_size": (8, MAX_IMAGE_SIZE)}
    for key in ("data.name", "data.eval", *sizes):
        section, _, leaf = key.partition(".")
        part = config.get(section)
        value = part.get(leaf) if isinstance(part, dict) else None
        if value is None:
            continue
        if key in sizes:
            low, high = sizes[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(
                    f"{source}: config {key}={value!r} must be a whole number between {low} and {high} (or null)"
                )
        elif not isinstance(value, str):
            raise ConfigError(f"{source}: config {key}={value!r} must be a dataset spec (text) or null")


def max_threads() -> int:
    """The most CPU threads a run may ask for: 256, or 4 x this machine's CPUs if more (100,000 crashes torch).

    Example:
        >>> max_threads() >= 256
        True
    """
    return max(256, 4 * (os.cpu_count() or 1))


def _numbers(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every float in a nested config (lists indexed as key.0, key.1, ...)."""
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _numbers(v, f"{prefix}{k}.")]
    if isinstance(node, (list, tuple)):
        return [kv for i, v in enumerate(node) for kv in _numbers(v, f"{prefix}{i}.")]
    return [(prefix[:-1], node)] if isinstance(node, float) else []


def _check_hparam_type(
    owner: str, key: str, value: Any, default: Any, nullable: bool = True, scalar_ok: bool = False
) -> None:
    """A setting given in YAML or on the command line must have its default's type (or be null where ``nullable``);
    ``key`` is its full name (``method.temperature``), ``owner`` whose default it is (``simclr``); ``scalar_ok``:
    a tuple default also takes one number (one value for every view)."""
    if isinstance(default, tuple) and value is not None:  # a pair such as a crop scale: same length, numbers

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not (
            (scalar_ok and number(value))
            or (isinstance(value, (list, tuple)) and len(value) == len(default) and all(number(v) for v in value))
        ):
            raise ConfigError(f"{key}={value!r} must be {len(default)} numbers ({owner}'s default: {list(default)})")
        return
    if default is None or isinstance(default, (list, tuple, dict)):
        return
    if value is None and nullable:
        return
    if value is None:  # null where the signature says it takes none
        raise ConfigError(f"{key}=null is not valid; give a {type(default).__name__} ({owner}'s default: {default!r})")
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
        raise ConfigError(f"{key}={value!r} must be of type {type(default).__name__} ({owner}'s default: {default!r})")


def _check_augment(cfg: DictConfig) -> None:
    """``augment.name`` (or the method's preset) exists and ``augment.kwargs`` are its arguments, each of its
    default's type: a preset ignores what it does not declare, so a misspelt key would change nothing silently."""
    from visionssl.augment import AUGMENTATIONS
    from visionssl.methods import method_class

    name = cfg.augment.name or method_class(cfg.method.name).augmentation
    if name not in AUGMENTATIONS:
        raise ConfigError(f"augment.name: {AUGMENTATIONS.unknown_message(str(name))}")
    params = inspect.signature(AUGMENTATIONS.get(name)).parameters
    passes_on = any(p.kind is p.VAR_KEYWORD and not p.name.startswith("_") for p in params.values())
    valid = {
        k: p.default
        for k, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k not in ("image_size", "channels")
    }
    for key, value in (OmegaConf.to_container(cfg.augment.kwargs, resolve=True) or {}).items():
        if key not in valid:
            if passes_on:
                continue
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"augment.kwargs.{key}: the {name!r} preset has no such argument; {hint}valid: {', '.join(valid)}"
            )
        default, hint = valid[key], str(params[key].annotation)
        scalar_ok = re.search(r"\b(float|int)\b", re.sub(r"tuple\[[^\]]*\]", "", hint)) is not None
        _check_hparam_type(f"the {name!r} preset", f"augment.kwargs.{key}", value, default, "None" in hint, scalar_ok)


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
