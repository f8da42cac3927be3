"""The one error type of the model zoo (its own module, so that every zoo module can raise it)."""

from __future__ import annotations


class ZooError(RuntimeError):
    """A zoo problem with a message that names the file, entry, field or URL and says what to do."""
