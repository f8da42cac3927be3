"""Downloads into the cache: streamed, resumable, and verified before the file is used.

Cache layout: ``$VISIONSSL_HOME/zoo/<entry name>/<file name>`` (default ``VISIONSSL_HOME`` is
``~/.cache/visionssl``), next to ``<file name>.sha256``, the hash computed while downloading (in
``sha256sum`` format, so ``sha256sum -c`` checks it).

Partial files. A download streams into ``<file name>.<url id>.part`` beside its final place and
hashes while it streams; only a complete file whose sha256 matches the zoo (and whose size matches
``Content-Length``) is renamed, atomically, to its final name. When the connection drops, the
``.part`` is kept only if the server accepts Range requests: the next attempt resumes it (its
bytes are unverified until the whole file is hashed). Otherwise, on an HTTP error (404, ...) and
on a hash mismatch, the ``.part`` is deleted. The cache therefore never holds a bad file under its
final name. Local paths and ``file://`` URLs are used in place (never copied) and hashed each time.

Offline mode (``VISIONSSL_OFFLINE=1`` or ``offline=True``) uses the cache and local files only.

Example (a local file, so nothing is downloaded):
    >>> import hashlib, tempfile, pathlib
    >>> from visionssl.zoo.registry import parse_entry
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
    >>> _ = p.write_bytes(b"weights")
    >>> entry = parse_entry({"name": "doc", "method": "m", "backbone": "resnet18", "urls": [str(p)],
    ...     "sha256": hashlib.sha256(b"weights").hexdigest(), "size": None, "format": "torchvision",
    ...     "recipe": {"dataset": "x", "epochs": 1, "batch_size": 1}, "metrics": [], "paper": None, "license": None})
    >>> fetch(entry) == p
    True
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import warnings
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname, urlopen

from visionssl.files import visionssl_home
from visionssl.zoo.registry import ZooEntry, ZooError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds without a byte from the server before giving up
CHUNK = 1 << 20


class UnverifiedDownloadWarning(UserWarning):
    """A file accepted on trust because its zoo entry has no sha256 (trust on first use)."""


def cache_dir() -> Path:
    """The download cache, ``$VISIONSSL_HOME/zoo``."""
    return visionssl_home() / "zoo"


def cached_path(entry: ZooEntry) -> Path:
    """Where ``entry``'s file lives in the cache (whether or not it is there)."""
    return cache_dir() / entry.name / entry.filename


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``VISIONSSL_OFFLINE`` is set to 1/true/yes/on."""
    if offline is not None:
        return offline
    return os.environ.get("VISIONSSL_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


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


def fetch(entry: ZooEntry, *, offline: bool | None = None, timeout: float = DEFAULT_TIMEOUT,
          progress: bool = True, force: bool = False) -> Path:
    """The verified local file of ``entry``: from the cache, a local path, or downloaded (mirrors in order).

    Args:
        entry: the zoo entry.
        offline: use only the cache and local files (default: ``VISIONSSL_OFFLINE``).
        timeout: seconds to wait for the server before trying the next URL.
        progress: show a progress bar while downloading.
        force: download again even if the cache holds the file.

    Raises ``ZooError`` listing what went wrong with every URL and what to do. An entry without
    a sha256 is downloaded with an ``UnverifiedDownloadWarning`` (trust on first use).
    """
    offline = is_offline(offline)
    dest = cached_path(entry)
    errors: list[str] = []
    if dest.is_file() and not force:
        recorded = _read_sidecar(dest) or _write_sidecar(dest, sha256_file(dest))
        if entry.sha256 is None or recorded == entry.sha256:
            return dest
        errors.append(f"{dest}: the cached file has sha256 {recorded}, the zoo expects {entry.sha256} "
                      f"(an older or corrupt file; a successful download replaces it)")
    for url in entry.urls:
        local = local_path(url)
        if local is not None:
            if not local.is_file():
                errors.append(f"{local}: no such file")
                continue
            try:
                check_hash(local, sha256_file(local), entry, source=str(local))
            except ZooError as exc:
                errors.append(str(exc))
                continue
            return local
        if offline:
            errors.append(f"{url}: not tried (offline mode)")
            continue
        try:
            digest = download_url(url, dest, entry=entry, timeout=timeout, progress=progress)
        except ZooError as exc:
            errors.append(str(exc))
            continue
        if entry.sha256 is None:
            warnings.warn(
                f"{entry.name}: the zoo has no sha256 for this file ({entry.note}), so {url} was accepted on trust "
                f"(trust on first use). Its sha256 is {digest}. Run `visionssl zoo pin {entry.name}` to record it: "
                f"later downloads are then verified against it.",
                UnverifiedDownloadWarning, stacklevel=2,
            )
        return dest
    if offline:
        raise ZooError(
            f"offline mode (VISIONSSL_OFFLINE=1 or offline=True): {entry.name} is not in the cache at {dest}.\n  - "
            + "\n  - ".join(errors)
            + f"\nWhat to do: run `visionssl zoo download {entry.name}` where there is internet and copy the file to "
              f"{dest}, or turn offline mode off."
        )
    raise ZooError(
        f"could not get {entry.name}:\n  - " + "\n  - ".join(errors)
        + "\nWhat to do: check the network (and proxy settings such as HTTPS_PROXY) and run the command again; an "
          "interrupted download resumes where it stopped. Or download the file yourself from one of the URLs above "
          f"and put it at {dest}: it is checked against the zoo's sha256 when first used."
    )


def download_url(url: str, dest: Path, *, entry: ZooEntry, timeout: float = DEFAULT_TIMEOUT,
                 progress: bool = True) -> str:
    """Streams ``url`` to ``dest`` (resuming a kept ``.part``), verifies it, renames it; returns its sha256.

    See the module docstring for the policy on partial files.
    """
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:8]}.part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "visionssl-zoo"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if 400 <= exc.code < 500:  # the URL is wrong or the kept part no longer fits; a 5xx may pass, keep it
            part.unlink(missing_ok=True)
        if exc.code == 416 and offset:  # the kept part is not a prefix of this file any more: start again
            return download_url(url, dest, entry=entry, timeout=timeout, progress=progress)
        raise ZooError(f"{url}: the server answered HTTP {exc.code} ({exc.reason})"
                       + (": the file is not (or no longer) at this address" if exc.code in (404, 410) else "")) from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise ZooError(f"{url}: {_describe(exc, timeout)}") from None

    if offset and response.status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        response.close()  # a range we did not ask for: start again from zero
        part.unlink(missing_ok=True)
        return download_url(url, dest, entry=entry, timeout=timeout, progress=progress)
    with response:
        if offset and response.status != 206:  # the server ignored the Range request
            offset = 0
        resumable = response.status == 206 or response.headers.get("Accept-Ranges", "").lower() == "bytes"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        hashers = _hashers(entry)
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    for h in hashers.values():
                        h.update(chunk)
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False,
            ) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
        except (OSError, http.client.HTTPException) as exc:
            if not resumable:
                part.unlink(missing_ok=True)
            kept = (f"the partial file {part} is kept: run the same command again to resume" if resumable
                    else "the server does not support resuming, so the partial file was deleted")
            raise ZooError(f"{url}: the download stopped after {received} of {total or '?'} bytes "
                           f"({_describe(exc, timeout)}); {kept}") from None
        except BaseException:  # Ctrl-C: same policy, then let it propagate
            if not resumable:
                part.unlink(missing_ok=True)
            raise

    digest = hashers["sha256"].hexdigest()
    try:
        check_hash(part, digest, entry, source=url, hashers=hashers)
    except ZooError:
        part.unlink(missing_ok=True)
        raise
    _write_sidecar(dest, digest)
    os.replace(part, dest)
    for stale in dest.parent.glob(f"{dest.name}.*.part"):  # parts left by other mirrors
        stale.unlink(missing_ok=True)
    return digest


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
            got = (hashers[algorithm] if hashers and algorithm in hashers else _hash_file(path, algorithm)).hexdigest()
        if not got.startswith(prefix):
            raise ZooError(
                f"{source}: {algorithm} is {got}, which does not start with {prefix}, the hash the authors published "
                f"(field published_hash of {entry.name}). The file was changed or corrupted; it was not kept."
            )


def local_path(url: str) -> Path | None:
    """The file a ``file://`` URL or a plain path points to; ``None`` for http(s) URLs.

    Example:
        >>> local_path("file:///tmp/a%20b.pt"), local_path("https://x.org/a.pt")
        (PosixPath('/tmp/a b.pt'), None)
    """
    if "://" not in url:
        return Path(url).expanduser()
    parsed = urlparse(url)
    if parsed.scheme.lower() == "file":
        return Path(url2pathname(unquote(parsed.path)))
    return None


def _hashers(entry: ZooEntry) -> dict:
    hashers = {"sha256": hashlib.sha256()}
    if entry.published_hash and not entry.published_hash.startswith("sha256:"):
        algorithm = entry.published_hash.split(":")[0]
        hashers[algorithm] = hashlib.new(algorithm)
    return hashers


def _hash_file(path: Path, algorithm: str):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    try:
        text = _sidecar(path).read_text().split()
    except OSError:
        return None
    return text[0] if text and len(text[0]) == 64 else None


def _write_sidecar(path: Path, digest: str) -> str:
    _sidecar(path).write_text(f"{digest}  {path.name}\n")
    return digest


def _describe(exc: BaseException, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, URLError) and not isinstance(exc, HTTPError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer from the server within {timeout:g} s (timed out)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing is listening at that address)"
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host name (no network, or a wrong URL)"
    if isinstance(reason, http.client.IncompleteRead):
        return "the connection closed before the end of the file"
    return f"{type(reason).__name__}: {reason}"
