"""Argument types and texts shared by the ``visionssl`` commands.

Example:
    >>> positive_int("3"), positive_float("0.5"), positive_seconds("10"), image_size("224")
    (3, 0.5, 10.0, 224)
"""

from __future__ import annotations

import argparse

from visionssl.engine.config_checks import MAX_IMAGE_SIZE

EPILOG = "Docs: README.md. Every config key can be overridden as KEY=VALUE, e.g. optim.lr=0.5 train.knn_every=5."


def positive_int(text: str) -> int:
    """A whole number >= 1 (an argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def image_size(text: str) -> int:
    """A view side in pixels, 8 to ``MAX_IMAGE_SIZE`` (an argparse ``type``)."""
    value = positive_int(text)
    if not 8 <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be between 8 and {MAX_IMAGE_SIZE} pixels, got {value}")
    return value
