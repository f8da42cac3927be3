"""Keyword arguments for a backbone read from a file: an allow-list of architecture arguments, never weights.

A checkpoint's config, a ``.safetensors`` file's metadata, a zoo entry or a resumed ``config.yaml`` may
give a backbone keyword arguments. They are plain data and:

- no argument may load weights or files (``pretrained*``, ``checkpoint*``, ``cache_dir``, any name with
  ``path``, ``file`` or ``url`` in it), and no string anywhere in a value may be a path or a URL: the
  weights come from the file itself. This holds for every backbone, code included (``TrustError``).
- a timm model, or a registered factory taking ``**kwargs``, accepts the architecture arguments in
  ``ARCHITECTURE_KWARGS`` only, each with a checked type and range; a registered factory's own
  declared parameters are accepted as plain data (``ConfigError`` otherwise).

Example:
    >>> check_file_kwargs("resnet18", {"in_chans": 1, "drop_rate": 0.1}, source="ck.pt")
    {'in_chans': 1, 'drop_rate': 0.1}
    >>> check_file_kwargs("resnet18", {"in_chans": -1}, source="ck.pt")
    Traceback (most recent call last):
    ...
    visionssl.errors.ConfigError: ck.pt: backbone 'resnet18' argument in_chans=-1 is invalid; valid: an integer in [1, 64]
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from visionssl.errors import ConfigError, TrustError

MAX_DEPTH = 8  # nesting of lists / dicts in one value; architecture arguments are flat or pairs
_WEIGHT_NAME = re.compile(r"^(pretrained|checkpoint)|path|file|url|^cache_dir$", re.IGNORECASE)
_WEIGHT_SUFFIX = re.compile(r"\.(pt|pth|bin|ckpt|safetensors|npz|npy|pkl|pickle|h5|tar|gz|zip|onnx)$", re.IGNORECASE)


def _int(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: type(v) is int and lo <= v <= hi), f"an integer in [{lo}, {hi}]"


def _int_or_pair(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    one, _ = _int(lo, hi)
    return (
        lambda v: one(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(one(x) for x in v)),
        f"an integer in [{lo}, {hi}] or a pair of them",
    )


def _rate() -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: type(v) in (int, float) and math.isfinite(v) and 0 <= v < 1,
        "a finite number in [0, 1)",
    )


def _float(lo: float, hi: float, optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    check = lambda v: type(v) in (int, float) and math.isfinite(v) and lo < v <= hi  # noqa: E731
    if optional:
        return (lambda v: v is None or check(v)), f"null or a finite number in ({lo}, {hi}]"
    return check, f"a finite number in ({lo}, {hi}]"


def _bool(optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    if optional:
        return (lambda v: v is None or type(v) is bool), "true, false or null"
    return (lambda v: type(v) is bool), "true or false"


def _choice(*choices: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: type(v) is type(choices[0]) and v in choices), "one of " + ", ".join(map(repr, choices))


# The architecture arguments our configs, recipes, zoo entries and tests use (timm ResNets and ViTs).
ARCHITECTURE_KWARGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "in_chans": _int(1, 64),
    "img_size": _int_or_pair(8, 1024),
    "patch_size": _int_or_pair(1, 64),
    "drop_rate": _rate(),
    "drop_path_rate": _rate(),
    "attn_drop_rate": _rate(),
    "proj_drop_rate": _rate(),
    "pos_drop_rate": _rate(),
    "patch_drop_rate": _rate(),
    "global_pool": _choice("", "avg", "max", "avgmax", "catavgmax", "token", "map"),
    "fc_norm": _bool(optional=True),
    "dynamic_img_size": _bool(),
    "dynamic_img_pad": _bool(),
    "class_token": _bool(),
    "no_embed_class": _bool(),
    "qkv_bias": _bool(),
    "qk_norm": _bool(),
    "pre_norm": _bool(),
    "reg_tokens": _int(0, 64),
    "embed_dim": _int(8, 4096),
    "depth": _int(1, 64),
    "num_heads": _int(1, 64),
    "mlp_ratio": _float(0.0, 16.0),
    "init_values": _float(0.0, 10.0, optional=True),
    "output_stride": _choice(8, 16, 32),
}


def check_file_kwargs(
    name: str, kwargs: dict[str, Any], *, source: str, declared: list[str] | None = None, open_ended: bool = True
) -> dict[str, Any]:
    """``kwargs`` for backbone ``name`` from ``source``, checked; raises ``TrustError`` / ``ConfigError`` in one line.

    ``declared``: the factory's own parameters (a registered factory), accepted as plain data; ``None`` for
    code, whose parameters are not known without importing it (then any name is accepted as plain data).
    ``open_ended``: the factory also takes ``**kwargs`` (a timm model, or a wrapper passing them on to one);
    those must be architecture arguments.

    Example:
        >>> check_file_kwargs("resnet18_cifar", {"checkpoint_path": "/x"}, source="w.safetensors")
        Traceback (most recent call last):
        ...
        visionssl.errors.TrustError: w.safetensors: backbone argument 'checkpoint_path' would load weights from elsewhere; ...
    """
    for key, value in kwargs.items():
        if _WEIGHT_NAME.search(key):
            raise TrustError(
                f"{source}: backbone argument {key!r} would load weights from elsewhere; the weights come from "
                f"the file itself, so arguments named pretrained*, checkpoint*, cache_dir or *path* / *file* / "
                f"*url* are refused"
            )
        problem = _not_data(value, 0)
        if problem:
            raise ConfigError(f"{source}: backbone argument {key!r} {problem}")
    for key in kwargs:
        if declared is not None and key not in declared and not (open_ended and key in ARCHITECTURE_KWARGS):
            if open_ended:
                raise ConfigError(
                    f"{source}: backbone {name!r} argument {key!r} is not an architecture argument visionssl "
                    f"accepts from a file; valid: {', '.join(list(declared) + sorted(ARCHITECTURE_KWARGS))}"
                )
            raise ConfigError(
                f"{source}: backbone {name!r} has no argument(s) {key}; valid: {', '.join(declared) or '(none)'}"
            )
    return check_architecture_values(name, kwargs, source=source)


def check_architecture_values(name: str, kwargs: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Checks the values of the architecture arguments in ``kwargs`` (others pass as they are): one ``ConfigError``.

    Used for a file's arguments and for the user's own ``backbone.kwargs``, whose other names go to the model.

    Example:
        >>> check_architecture_values("resnet18", {"drop_rate": "abc", "my_own": 1}, source="backbone.kwargs")
        Traceback (most recent call last):
        ...
        visionssl.errors.ConfigError: backbone.kwargs: backbone 'resnet18' argument drop_rate='abc' is invalid; valid: a finite number in [0, 1)
    """
    for key, value in kwargs.items():
        if key in ARCHITECTURE_KWARGS:
            check, valid = ARCHITECTURE_KWARGS[key]
            if not check(value):
                raise ConfigError(
                    f"{source}: backbone {name!r} argument {key}={_short(value)} is invalid; valid: {valid}"
                )
    if "img_size" in kwargs and "patch_size" in kwargs:
        tokens = math.prod(_pair(kwargs["img_size"])) // math.prod(_pair(kwargs["patch_size"]))
        if tokens > 65536:
            raise ConfigError(
                f"{source}: backbone {name!r} img_size={_short(kwargs['img_size'])} with patch_size="
                f"{_short(kwargs['patch_size'])} makes {tokens} tokens; valid: at most 65536"
            )
    return dict(kwargs)


def _not_data(value: Any, depth: int) -> str | None:
    """Why ``value`` is not plain data free of paths and URLs, or None."""
    if depth > MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} levels deep"
    if value is None or isinstance(value, (bool, int, float)):
        return None
    if isinstance(value, str):
        if "/" in value or "\\" in value or value.startswith("~") or _WEIGHT_SUFFIX.search(value):
            return f"holds the path or URL {_short(value)}; a file's arguments may not name files or URLs"
        return None
    if isinstance(value, (list, tuple)):
        return next((p for p in (_not_data(v, depth + 1) for v in value) if p), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "must be plain data: a mapping with non-string keys"
        return next(
            (p for p in (_not_data(k, depth + 1) or _not_data(v, depth + 1) for k, v in value.items()) if p), None
        )
    return f"must be plain data (numbers, strings, lists, dicts), got {type(value).__name__}"


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
