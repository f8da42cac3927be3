"""Generic file helpers: where visionssl keeps its files, and writes that never leave half a file.

Example:
    >>> import tempfile
    >>> p = atomic_write(tempfile.mkdtemp() + "/a/b.txt", "hello")
    >>> p.read_text()
    'hello'
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from visionssl.errors import StorageError

TMP_SUFFIX = ".tmp"


def visionssl_home() -> Path:
    """``$VISIONSSL_HOME`` or ``~/.cache/visionssl``: where caches and downloads live.

    Example:
        >>> import os
        >>> os.environ["VISIONSSL_HOME"] = "/tmp/vs"; str(visionssl_home())
        '/tmp/vs'
        >>> del os.environ["VISIONSSL_HOME"]
    """
    return Path(os.environ.get("VISIONSSL_HOME") or "~/.cache/visionssl").expanduser()


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Writes ``content`` to a temporary file beside ``path``, fsyncs it, then renames it over ``path``.

    ``content`` is bytes, text (UTF-8) or a function that writes into the open binary file. A crash at
    any moment leaves the old file or the new one, never half of one; a failed write removes the
    temporary file and raises ``StorageError`` (an ``OSError``) naming ``path`` (with the free space, for a full disk).
    The file gets the umask's mode (``file_mode``), as any other file the user writes.
    Temporary files are named ``.<name>.<random>.tmp`` (see ``remove_stale_temp_files``).

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "x.bin", lambda f: f.write(b"\\x01\\x02"))
        >>> p.read_bytes()
        b'\\x01\\x02'
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, file_mode())  # like any other file the user writes, not mkstemp's 0600
        text = isinstance(content, str)
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # make the rename itself survive a power cut
    except Exception as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(exc)  # torch reports a failed write as RuntimeError with the OSError as context
        if cause is None:
            raise
        raise StorageError(
            cause.errno, f"could not write {path}: {cause.strerror or cause}{_free_space(path.parent)}"
        ) from exc
    except BaseException:  # KeyboardInterrupt mid-write: no half-written file is left
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def open_no_follow(path: str | os.PathLike, flags: int) -> int:
    """``os.open(path, flags)`` for a file written in place, refusing a symbolic link at ``path``.

    For files a run opens rather than replaces (its lock, the append-only ``metrics.jsonl``): a link
    put there by someone else would make the run write into the file it points to. Raises
    ``StorageError`` naming ``path`` if it is a link; returns the file descriptor (mode ``file_mode()``).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); (folder / "link").symlink_to(folder / "victim")
        >>> os.close(open_no_follow(folder / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        >>> open_no_follow(folder / "link", os.O_WRONLY | os.O_CREAT)
        Traceback (most recent call last):
        ...
        visionssl.errors.StorageError: [Errno 40] refusing to write .../link: it is a symbolic link ...
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and Path(path).is_symlink()):
            raise StorageError(
                exc.errno,
                f"refusing to write {path}: it is a symbolic link (to {os.readlink(path)}), and a run writes only "
                f"inside its directory; remove the link",
            ) from None
        raise


def file_mode() -> int:
    """The mode a new file gets under the process's umask (``mkstemp`` alone would give 0600).

    Example:
        >>> 0 < file_mode() <= 0o666
        True
    """
    try:  # read without changing it: os.umask() sets it, which would race with other threads
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files an ``atomic_write(path, ...)`` killed mid-write left beside ``path``.

    Only for files one process writes (a run's own checkpoint): another writer's file in progress
    would be deleted too.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); (folder / ".last.pt.abc.tmp").write_bytes(b"half")
        4
        >>> [p.name for p in remove_stale_temp_files(folder / "last.pt")]
        ['.last.pt.abc.tmp']
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _os_error_in(exc: BaseException | None) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MiB free on that disk)"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system can fsync a directory
    finally:
        os.close(fd)
