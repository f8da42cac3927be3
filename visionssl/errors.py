"""One hierarchy for what the user got wrong; anything else is an internal error and must look like one.

Every error that a bad input (a config value, an image, a checkpoint, a zoo entry, a code spec) causes
is a ``UserError``, raised where that input is checked, with a message that names the input and says
what would be valid. The CLI prints such an error in one line and exits 2. Any other exception is a
bug: the CLI says so, names the exception and where it wrote the traceback, and exits 1.

Each class also derives from the built-in type its callers caught before (``ValueError``,
``RuntimeError``, ``KeyError``, ``OSError``), so ``except ValueError`` in user code keeps working.

Example:
    >>> issubclass(ConfigError, UserError), issubclass(ConfigError, ValueError)
    (True, True)
    >>> str(DataError("data.root: no such folder 'x'"))
    "data.root: no such folder 'x'"
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong; the message names it and what would be valid (CLI: one line, exit 2)."""


class ConfigError(UserError, ValueError):
    """A configuration value that is unknown, of the wrong type or out of range; names the key."""


class DataError(UserError, ValueError):
    """A data source that cannot be used: a missing folder, a file that is no image, an empty split."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, not a torch file, or carrying code."""


class ZooError(UserError, RuntimeError):
    """A zoo problem with a message that names the file, entry, field or URL and says what to do."""


class TrustError(UserError, ValueError):
    """A file names code or weights from elsewhere that the user did not vouch for."""


class StorageError(UserError, OSError):
    """A file the run must write cannot be written (full disk, read-only folder, a link in the way)."""


class NonFiniteLossError(UserError, RuntimeError):
    """The loss or gradients became NaN or infinite under the user's recipe; the last good checkpoint is kept."""
