"""Downloads into the cache: streamed, resumable, and verified before the file is used.

Cache layout: ``$VISIONSSL_HOME/zoo/<entry name>/<file name>`` (default ``VISIONSSL_HOME`` is
``~/.cache/visionssl``), next to ``<file name>.sha256``, the hash computed while downloading (in
``sha256sum`` format, so ``sha256sum -c`` checks it), and ``<file name>.stat``, the file's size and
mtime when that hash was taken. Every use compares size and mtime (cheap); a file whose size or
mtime changed, or one placed by hand (no ``.stat``), is hashed again in full and checked against
the zoo's sha256 and published hash (or, for an entry without a sha256, the recorded one) before
it is used. ``visionssl zoo verify`` always re-hashes in full.

Limits. A download stops as soon as it exceeds the entry's ``size`` (or when ``Content-Length``
announces more); ``timeout`` is the idle limit: less than 1 KiB received in ``timeout`` seconds
(a silent server, or one trickling a byte a second) ends the attempt; ``total_timeout`` bounds the
whole download.

Partial files. A download streams into ``<file name>.<url id>.part`` beside its final place and
hashes while it streams; only a complete file whose sha256 matches the zoo (and whose size matches
``Content-Length``) is renamed, atomically, to its final name. When the connection drops, the
``.part`` is kept only if the server accepts Range requests: the next attempt resumes it (its
bytes are unverified until the whole file is hashed). Otherwise, on an HTTP error (404, ...), on
a hash mismatch and when the declared size is exceeded, the ``.part`` is deleted. A process killed
mid-download (SIGKILL, power cut) leaves only its ``.part``: the next attempt resumes it where the
server accepts Range requests, else starts it again from zero (overwriting it); a ``.part``
already larger than the declared size is deleted first. The cache therefore never holds a bad file under its
final name. Local paths and ``file://`` URLs are used in place (never copied) and hashed each time.

Offline mode (``VISIONSSL_OFFLINE=1`` or ``offline=True``) uses the cache and local files only.

Example (a local file, so nothing is downloaded):
    >>> import hashlib, tempfile, pathlib
    >>> from visionssl.zoo.catalog import parse_entry
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
import time
import warnings
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname, urlopen

from visionssl.files import visionssl_home
from visionssl.zoo.catalog import ZooEntry, ZooError
from visionssl.zoo.integrity import CHUNK, check_cached, check_hash, hashers_for, sha256_file, write_sidecar

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds with less than MIN_PROGRESS bytes from the server before giving up
MIN_PROGRESS = 1024  # bytes per `timeout` seconds: slower counts as stalled (a server trickling 1 byte/s)


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


def fetch(
    entry: ZooEntry,
    *,
    offline: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    force: bool = False,
    total_timeout: float | None = None,
) -> Path:
    """The verified local file of ``entry``: from the cache, a local path, or downloaded (mirrors in order).

    Args:
        entry: the zoo entry.
        offline: use only the cache and local files (default: ``VISIONSSL_OFFLINE``).
        timeout: idle limit: seconds with less than 1 KiB from the server before trying the next URL.
        progress: show a progress bar while downloading.
        force: download again even if the cache holds the file.
        total_timeout: seconds one URL's whole download may take (None: no limit).

    Raises ``ZooError`` listing what went wrong with every URL and what to do. An entry without
    a sha256 is downloaded with an ``UnverifiedDownloadWarning`` (trust on first use).
    """
    offline = is_offline(offline)
    dest = cached_path(entry)
    errors: list[str] = []
    if dest.is_file() and not force:
        problem = check_cached(dest, entry)
        if problem is None:
            return dest
        errors.append(problem)
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
            digest = download_url(
                url, dest, entry=entry, timeout=timeout, progress=progress, total_timeout=total_timeout
            )
        except ZooError as exc:
            errors.append(str(exc))
            continue
        if entry.sha256 is None:
            warnings.warn(
                f"{entry.name}: the zoo has no sha256 for this file ({entry.note}), so {url} was accepted on trust "
                f"(trust on first use). Its sha256 is {digest}. Run `visionssl zoo pin {entry.name}` to record it: "
                f"later downloads are then verified against it.",
                UnverifiedDownloadWarning,
                stacklevel=2,
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
        f"could not get {entry.name}:\n  - "
        + "\n  - ".join(errors)
        + "\nWhat to do: check the network (and proxy settings such as HTTPS_PROXY) and run the command again; an "
        "interrupted download resumes where it stopped. Or download the file yourself from one of the URLs above "
        f"and put it at {dest}: it is checked against the zoo's sha256 when first used."
    )


def download_url(
    url: str,
    dest: Path,
    *,
    entry: ZooEntry,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    total_timeout: float | None = None,
) -> str:
    """Streams ``url`` to ``dest`` (resuming a kept ``.part``), verifies it, renames it; returns its sha256.

    See the module docstring for the policy on partial files and the limits.
    """
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{hashlib.sha1(url.encode()).hexdigest()[:8]}.part")
    offset = part.stat().st_size if part.is_file() else 0
    if entry.size is not None and offset > entry.size:  # a stale part that cannot be a prefix of this file
        part.unlink()
        offset = 0
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    headers = {"User-Agent": "visionssl-zoo"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if 400 <= exc.code < 500:  # the URL is wrong or the kept part no longer fits; a 5xx may pass, keep it
            part.unlink(missing_ok=True)
        if exc.code == 416 and offset:  # the kept part is not a prefix of this file any more: start again
            return download_url(url, dest, entry=entry, timeout=timeout, progress=progress, total_timeout=total_timeout)
        raise ZooError(
            f"{url}: the server answered HTTP {exc.code} ({exc.reason})"
            + (": the file is not (or no longer) at this address" if exc.code in (404, 410) else "")
        ) from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise ZooError(f"{url}: {_describe(exc, timeout)}") from None

    if (
        offset
        and response.status == 206
        and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
    ):
        response.close()  # a range we did not ask for: start again from zero
        part.unlink(missing_ok=True)
        return download_url(url, dest, entry=entry, timeout=timeout, progress=progress, total_timeout=total_timeout)
    with response:
        if offset and response.status != 206:  # the server ignored the Range request
            offset = 0
        resumable = response.status == 206 or response.headers.get("Accept-Ranges", "").lower() == "bytes"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if entry.size is not None and total is not None and total > entry.size:
            part.unlink(missing_ok=True)
            raise ZooError(
                f"{url}: the server announces {total} bytes, but the zoo entry {entry.name} declares size "
                f"{entry.size}; nothing was downloaded (a wrong or tampered file)"
            )
        hashers = hashers_for(entry)
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    for h in hashers.values():
                        h.update(chunk)
        received = offset
        stall = _Stall(timeout, deadline)
        try:
            with (
                open(part, "ab" if offset else "wb") as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                while chunk := response.read1(CHUNK):  # read1: what has arrived, so the clock is checked often
                    received += len(chunk)
                    if entry.size is not None and received > entry.size:
                        raise _TooLarge(received)
                    stall.check(len(chunk))
                    f.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
        except _TooLarge:
            part.unlink(missing_ok=True)
            raise ZooError(
                f"{url}: the download passed the size the zoo entry {entry.name} declares ({entry.size} "
                f"bytes) and was stopped; the partial file was deleted (a wrong or tampered file)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            if not resumable:
                part.unlink(missing_ok=True)
            kept = (
                f"the partial file {part} is kept: run the same command again to resume"
                if resumable
                else "the server does not support resuming, so the partial file was deleted"
            )
            raise ZooError(
                f"{url}: the download stopped after {received} of {total or '?'} bytes "
                f"({_describe(exc, timeout)}); {kept}"
            ) from None
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
    if entry.size is not None and received != entry.size:
        part.unlink(missing_ok=True)
        raise ZooError(
            f"{url}: got {received} bytes, the zoo entry {entry.name} declares {entry.size}; it was not kept"
        )
    os.replace(part, dest)
    write_sidecar(dest, digest)
    for stale in dest.parent.glob(f"{dest.name}.*.part"):  # parts left by other mirrors
        stale.unlink(missing_ok=True)
    return digest


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


class _TooLarge(Exception):
    """More bytes than the entry's declared size."""


class _Stall:
    """Ends a download that is too slow: less than ``MIN_PROGRESS`` bytes in ``timeout`` s, or past ``deadline``."""

    def __init__(self, timeout: float, deadline: float | None):
        self.timeout, self.deadline = timeout, deadline
        self.window_start, self.window_bytes = time.monotonic(), 0

    def check(self, n: int) -> None:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeoutError("the whole download took longer than total_timeout")
        self.window_bytes += n
        if now - self.window_start >= self.timeout:
            if self.window_bytes < MIN_PROGRESS:
                raise TimeoutError(f"{self.window_bytes} bytes in {now - self.window_start:.0f} s")
            self.window_start, self.window_bytes = now, 0


def _describe(exc: BaseException, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, URLError) and not isinstance(exc, HTTPError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        if str(reason) and "timed out" not in str(reason):  # raised by _Stall
            return f"too slow ({reason}; the limit is {MIN_PROGRESS} bytes per {timeout:g} s, or total_timeout)"
        return f"no answer from the server within {timeout:g} s (timed out)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing is listening at that address)"
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host name (no network, or a wrong URL)"
    if isinstance(reason, http.client.IncompleteRead):
        return "the connection closed before the end of the file"
    return f"{type(reason).__name__}: {reason}"
