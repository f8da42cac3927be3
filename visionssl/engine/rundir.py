"""A run directory belongs to one run: an exclusive lock while it lives, no silent reuse.

``run_lock(dir)`` holds ``fcntl.flock`` on ``dir/.lock`` (the holder's PID written in it); a second
process fails at once with ``RunDirError`` naming that PID. The lock is re-entrant within a process
(the CLI takes it before loading data, the Trainer again for the run's life). ``check_run_dir``
refuses a non-empty directory unless the run resumes it or overwrites it; ``clear_run_dir`` removes
a previous run's files for ``--overwrite``, called only once the new run's config, backbone and data
have been checked. A run never writes through a symbolic link: ``refuse_links`` refuses a run
directory whose run files or folders are links, and the files written in place are opened with
``O_NOFOLLOW`` (``visionssl.files.open_no_follow``).

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with run_lock(d):
    ...     with run_lock(d):  # the same process may take it again
    ...         pass
    >>> check_run_dir(d, resume=False, overwrite=False)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from visionssl.engine.checkpoint import LAST
from visionssl.engine.config import ConfigError
from visionssl.files import open_no_follow

LOCK = ".lock"
# what a run writes into its directory (``--overwrite`` removes these and nothing else)
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "export", "trusted_code.json", LOCK)

_held: dict[Path, list] = {}  # resolved run dir -> [fd, depth] for the locks this process holds


class RunDirError(ConfigError):
    """A run directory that is in use, already holds another run, or holds nothing to resume."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Holds the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block."""
    import fcntl

    folder = Path(run_dir).resolve()
    if folder in _held:
        _held[folder][1] += 1
        try:
            yield folder
        finally:
            _held[folder][1] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    refuse_links(folder)
    fd = open_no_follow(folder / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirError(
                f"run directory {folder} is in use by another run (process {holder}); wait for it to "
                f"finish or choose another --out"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = [fd, 1]
    try:
        yield folder
    finally:
        _held[folder][1] -= 1
        if _held[folder][1] == 0:
            del _held[folder]
            os.close(fd)  # releases the flock; the file stays (removing it would race a waiting process)


def run_files(run_dir: str | os.PathLike) -> list[str]:
    """Names in ``run_dir`` other than the lock file (empty for a missing directory)."""
    folder = Path(run_dir)
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK) if folder.is_dir() else []


def refuse_links(run_dir: str | os.PathLike) -> None:
    """Refuses a run directory where a file or folder the run writes is a symbolic link (``RunDirError``).

    A link there would make the run write (or ``--overwrite`` delete) wherever it points.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "metrics.jsonl").symlink_to("/etc/passwd")
        >>> refuse_links(d)
        Traceback (most recent call last):
        ...
        visionssl.engine.rundir.RunDirError: .../metrics.jsonl is a symbolic link (to /etc/passwd); ...
    """
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_symlink():
            raise RunDirError(
                f"{path} is a symbolic link (to {os.readlink(path)}); a run writes only inside its own directory "
                f"and never through a link: remove the link (the run makes its own {name}) or choose another --out"
            )


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuses what would mix two runs in ``run_dir``: one ``RunDirError`` line saying what would be valid."""
    if not str(run_dir).strip():
        raise RunDirError("--out is empty; give the run directory to write (e.g. --out runs/my_run)")
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"--out {folder} is a file, not a run directory")
    if resume and overwrite:
        raise RunDirError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if resume:
        if not (folder / "checkpoints" / LAST).is_file():
            raise RunDirError(f"nothing to resume in {folder}: {folder / 'checkpoints' / LAST} does not exist")
        return
    present = run_files(folder)
    if present and not overwrite:
        raise RunDirError(
            f"run directory {folder} is not empty ({', '.join(present[:5])}); continue that run with "
            f"--resume, replace it with --overwrite, or choose another --out"
        )
    if overwrite:
        _refuse_foreign_files(folder)


def _refuse_foreign_files(folder: Path) -> None:
    foreign = [name for name in run_files(folder) if name not in RUN_FILES]
    if foreign:
        raise RunDirError(
            f"--overwrite refuses to empty {folder}: it holds files a visionssl run does not write "
            f"({', '.join(foreign[:5])}); move them or choose another --out"
        )


def clear_run_dir(run_dir: str | os.PathLike) -> None:
    """Removes a previous run's files from ``run_dir`` (``--overwrite``); refuses if it holds anything else.

    Call it last, once the new run's config, backbone and data have been checked. A link is removed,
    never followed (``shutil.rmtree`` does not follow the links inside a folder either).
    """
    folder = Path(run_dir)
    _refuse_foreign_files(folder)
    for name in run_files(folder):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@contextlib.contextmanager
def claim_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Checks ``run_dir`` (``check_run_dir``) and holds its lock; it deletes nothing.

    With ``overwrite`` the caller calls ``clear_run_dir`` once the new run has been checked, so a
    refused config leaves the old run as it was. A missing directory is checked before anything is
    created, so a refused command leaves nothing behind.
    """
    created = not Path(run_dir).is_dir()
    if not str(run_dir).strip() or created:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    try:
        with run_lock(run_dir) as folder:
            check_run_dir(run_dir, resume=resume, overwrite=overwrite)
            yield folder
    except BaseException:
        if created and not run_files(run_dir):  # refused before writing anything: leave no empty run behind
            with contextlib.suppress(OSError):
                (Path(run_dir) / LOCK).unlink()
                Path(run_dir).rmdir()
        raise
