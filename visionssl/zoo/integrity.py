"""Integrity of cached zoo files: sha256 while streaming, the published hash prefix, and the
``.sha256`` / ``.stat`` records beside each cached file that let a later use skip a full re-hash.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"
    >>> _ = p.write_bytes(b"abc")
    >>> digest = write_sidecar(p, sha256_file(p))
    >>> read_sidecar(p) == digest, read_stat(p)[0]
    (True, 3)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from visionssl.files import atomic_write
from visionssl.zoo.catalog import ZooEntry, ZooError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_cached(dest: Path, entry: ZooEntry) -> str | None:
    """``None`` if the cached file can be used, else why not. Size and mtime are compared with those
    recorded when it was hashed; if they changed (or were never recorded: a file placed by hand) the
    file is hashed again and checked against the zoo's hashes, or the recorded one for an entry
    without a sha256."""
    recorded, stat = read_sidecar(dest), read_stat(dest)
    st = dest.stat()
    if recorded is not None and stat == (st.st_size, st.st_mtime_ns):
        digest = recorded
    else:
        digest = sha256_file(dest)
        if entry.sha256 is None and recorded is not None and digest != recorded:
            return (
                f"{dest}: the cached file changed since it was downloaded (sha256 {digest}, recorded {recorded}); "
                f"a successful download replaces it"
            )
        if entry.sha256 is None or digest == entry.sha256:
            try:
                check_hash(dest, digest, entry, source="the cached file")
            except ZooError as exc:
                return f"{dest}: {str(exc).split('. ')[0]}; a successful download replaces it"
        if entry.size is not None and st.st_size != entry.size:
            return f"{dest}: the cached file has {st.st_size} bytes, the zoo declares {entry.size}"
        if entry.sha256 is None or digest == entry.sha256:
            write_sidecar(dest, digest)
    if entry.sha256 is not None and digest != entry.sha256:
        return (
            f"{dest}: the cached file has sha256 {digest}, the zoo expects {entry.sha256} "
            f"(an older or corrupt file; a successful download replaces it)"
        )
    return None


def check_hash(path: Path, digest: str, entry: ZooEntry, *, source: str, hashers: dict | None = None) -> None:
    """Raises ``ZooError`` if ``digest`` (the sha256 of ``path``) or its published hash prefix disagrees with ``entry``."""
    if entry.sha256 is not None and digest != entry.sha256:
        raise ZooError(
            f"{source}: sha256 mismatch, got {digest} but the zoo ({entry.origin}) expects {entry.sha256}. "
            f"The file was changed, corrupted or tampered with; it was not kept. Try again or another mirror; "
            f"if it persists, the entry needs updating."
        )
    if entry.published_hash:
        algorithm, prefix = entry.published_hash.split(":")
        if algorithm == "sha256":
            got = digest
        else:
            got = (hashers[algorithm] if hashers and algorithm in hashers else hash_file(path, algorithm)).hexdigest()
        if not got.startswith(prefix):
            raise ZooError(
                f"{source}: {algorithm} is {got}, which does not start with {prefix}, the hash the authors published "
                f"(field published_hash of {entry.name}). The file was changed or corrupted; it was not kept."
            )


def hashers_for(entry: ZooEntry) -> dict:
    """The hash objects a download of ``entry`` updates as it streams (sha256, plus the published hash's)."""
    hashers = {"sha256": hashlib.sha256()}
    if entry.published_hash and not entry.published_hash.startswith("sha256:"):
        algorithm = entry.published_hash.split(":")[0]
        hashers[algorithm] = hashlib.new(algorithm)
    return hashers


def hash_file(path: Path, algorithm: str):
    """The ``hashlib`` object of ``algorithm`` over the whole file."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_sidecar(path: Path) -> str | None:
    """The sha256 recorded beside a downloaded file (its ``.sha256``), or None when there is none."""
    try:
        text = _sidecar(path).read_text(errors="replace").split()  # a damaged record is no record, not a crash
    except OSError:
        return None
    return text[0] if text and len(text[0]) == 64 else None


def write_sidecar(path: Path, digest: str) -> str:
    """Records the hash (``.sha256``) and the size and mtime it was taken at (``.stat``)."""
    atomic_write(_sidecar(path), f"{digest}  {path.name}\n")  # never a half-written hash beside the file
    st = path.stat()
    atomic_write(path.with_name(path.name + ".stat"), f"{st.st_size} {st.st_mtime_ns}\n")
    return digest


def read_stat(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) recorded when the file was last hashed, or None."""
    try:
        size, mtime = path.with_name(path.name + ".stat").read_text().split()
        return int(size), int(mtime)
    except (OSError, ValueError):
        return None
