"""The one error type of the model zoo (its own module, so that every zoo module can raise it)."""

from __future__ import annotations

from visionssl.errors import ZooError

__all__ = ["ZooError"]
