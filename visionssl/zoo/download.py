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
whole exchange with one server: connect, status line, headers and body (every socket read waits at
most the time left, see ``visionssl.zoo.timeouts``).

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

import dataclasses
import hashlib
import http.client
import logging
import os
import socket
import warnings
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname

from visionssl.errors import StorageError
from visionssl.files import visionssl_home
from visionssl.zoo.catalog import ZooEntry, ZooError
from visionssl.zoo.hub import WEIGHTS_NAME, hub_download_url, hub_weights
from visionssl.zoo.integrity import CHUNK, check_cached, check_hash, hashers_for, sha256_file, write_sidecar
from visionssl.zoo.timeouts import MIN_PROGRESS, Deadline, Stall, TotalTimeoutError, open_url

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds with less than MIN_PROGRESS bytes from the server before giving up


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

    Raises ``ZooError`` (one line) saying what went wrong with every URL and what to do. An entry without
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
                hub_download_url(url),
                dest,
                entry=entry,
                timeout=timeout,
                progress=progress,
                total_timeout=total_timeout,
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
            f"offline mode (VISIONSSL_OFFLINE=1 or offline=True): {entry.name} is not in the cache at {dest} "
            f"({'; '.join(errors)}). What to do: run `visionssl zoo download {entry.name}` where there is internet "
            f"and copy the file to {dest}, or turn offline mode off."
        )
    raise ZooError(
        f"could not get {entry.name}: {'; '.join(errors)}. What to do: check the network (and proxy settings such "
        "as HTTPS_PROXY) and run the command again; an interrupted download resumes where it stopped. Or download "
        f"the file yourself from one of the URLs above and put it at {dest}: it is checked against the zoo's sha256 "
        "when first used."
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

    See the module docstring for the policy on partial files and the limits: ``total_timeout`` bounds
    everything from the connection to the last byte, headers included.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create the zoo cache folder {dest.parent}: {exc.strerror or exc}; set VISIONSSL_HOME to a "
            "folder you can write"
        ) from None
    if dest.exists() and not dest.is_file():  # checked before any byte is fetched: the rename would fail
        raise StorageError(
            f"the zoo cache path {dest} exists and is not a file (a folder?): move it away, or set VISIONSSL_HOME "
            "to another cache folder"
        )
    get = _Download(url, dest, entry, timeout, Deadline(total_timeout), progress)
    response, offset = get.open(get.kept_offset())
    with response:
        total, resumable = get.announced(response, offset)
        hashers = get.hash_kept(offset)
        received = get.stream(response, offset, total, resumable, hashers)
    digest = hashers["sha256"].hexdigest()
    get.install(digest, hashers, received)
    return digest


@dataclasses.dataclass
class _Download:
    """One attempt at one URL, in named steps: kept part, open, announced size, stream, verify and install."""

    url: str
    dest: Path
    entry: ZooEntry
    timeout: float
    deadline: Deadline
    progress: bool

    @property
    def part(self) -> Path:
        return self.dest.with_name(f"{self.dest.name}.{hashlib.sha1(self.url.encode()).hexdigest()[:8]}.part")

    def kept_offset(self) -> int:
        """The size of a kept ``.part`` to resume from; one larger than the declared size is deleted."""
        offset = self.part.stat().st_size if self.part.is_file() else 0
        if self.entry.size is not None and offset > self.entry.size:  # cannot be a prefix of this file
            self.part.unlink()
            offset = 0
        return offset

    def open(self, offset: int) -> tuple[http.client.HTTPResponse, int]:
        """The server's response and the offset it starts at; starts from zero when a kept part does not fit."""
        while True:
            headers = {"User-Agent": "visionssl-zoo"} | ({"Range": f"bytes={offset}-"} if offset else {})
            try:
                response = open_url(Request(self.url, headers=headers), self.timeout, self.deadline)
            except HTTPError as exc:
                if 400 <= exc.code < 500:  # the URL is wrong or the kept part no longer fits; a 5xx may pass
                    self.part.unlink(missing_ok=True)
                if exc.code == 416 and offset:  # the kept part is not a prefix of this file any more
                    offset = 0
                    continue
                raise ZooError(
                    f"{self.url}: the server answered HTTP {exc.code} ({exc.reason})"
                    + (": the file is not (or no longer) at this address" if exc.code in (404, 410) else "")
                ) from None
            except (URLError, OSError, http.client.HTTPException) as exc:
                raise ZooError(f"{self.url}: {self.describe(exc)}") from None
            if offset and response.status == 206:
                if response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                    return response, offset
                response.close()  # a range we did not ask for: start again from zero
                self.part.unlink(missing_ok=True)
                offset = 0
                continue
            return response, 0  # a full answer (also when the server ignored the Range request)

    def announced(self, response: http.client.HTTPResponse, offset: int) -> tuple[int | None, bool]:
        """The total size the server announces (None if it does not) and whether it can resume; refuses
        a file larger than the entry declares before reading any of it."""
        resumable = response.status == 206 or response.headers.get("Accept-Ranges", "").lower() == "bytes"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if self.entry.size is not None and total is not None and total > self.entry.size:
            self.part.unlink(missing_ok=True)
            raise ZooError(
                f"{self.url}: the server announces {total} bytes, but the zoo entry {self.entry.name} declares size "
                f"{self.entry.size}; nothing was downloaded (a wrong or tampered file)"
            )
        return total, resumable

    def hash_kept(self, offset: int) -> dict:
        """The hashers the download updates, already fed the first ``offset`` bytes (the kept part)."""
        hashers = hashers_for(self.entry)
        if offset:
            with open(self.part, "rb") as f:
                while chunk := f.read(CHUNK):
                    for h in hashers.values():
                        h.update(chunk)
        return hashers

    def stream(
        self, response: http.client.HTTPResponse, offset: int, total: int | None, resumable: bool, hashers: dict
    ) -> int:
        """Appends the body to the part, hashing it; returns the bytes the part holds. On failure the part is
        kept only if the server can resume it."""
        from tqdm.auto import tqdm

        received = offset
        stall = Stall(self.timeout, self.deadline)
        try:
            with (
                open(self.part, "ab" if offset else "wb") as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=self.dest.name,
                    disable=not self.progress,
                    leave=False,
                ) as bar,
            ):
                while chunk := response.read1(CHUNK):  # read1: what has arrived, so the clock is checked often
                    received += len(chunk)
                    if self.entry.size is not None and received > self.entry.size:
                        raise _TooLarge(received)
                    stall.check(len(chunk))
                    f.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
        except _TooLarge:
            self.part.unlink(missing_ok=True)
            raise ZooError(
                f"{self.url}: the download passed the size the zoo entry {self.entry.name} declares "
                f"({self.entry.size} bytes) and was stopped; the partial file was deleted (a wrong or tampered file)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            if not resumable:
                self.part.unlink(missing_ok=True)
            kept = (
                f"the partial file {self.part} is kept: run the same command again to resume"
                if resumable
                else "the server does not support resuming, so the partial file was deleted"
            )
            raise ZooError(
                f"{self.url}: the download stopped after {received} of {total or '?'} bytes "
                f"({self.describe(exc)}); {kept}"
            ) from None
        except BaseException:  # Ctrl-C: same policy, then let it propagate
            if not resumable:
                self.part.unlink(missing_ok=True)
            raise
        return received

    def install(self, digest: str, hashers: dict, received: int) -> None:
        """Checks the whole part against the zoo and renames it into place; a bad part is deleted."""
        try:
            check_hash(self.part, digest, self.entry, source=self.url, hashers=hashers)
        except ZooError:
            self.part.unlink(missing_ok=True)
            raise
        if self.entry.size is not None and received != self.entry.size:
            self.part.unlink(missing_ok=True)
            raise ZooError(
                f"{self.url}: got {received} bytes, the zoo entry {self.entry.name} declares {self.entry.size}; "
                f"it was not kept"
            )
        os.replace(self.part, self.dest)
        write_sidecar(self.dest, digest)
        for stale in self.dest.parent.glob(f"{self.dest.name}.*.part"):  # parts left by other mirrors
            stale.unlink(missing_ok=True)

    def describe(self, exc: BaseException) -> str:
        """What went wrong, in words: a timeout names the limit it hit."""
        reason = exc.reason if isinstance(exc, URLError) and not isinstance(exc, HTTPError) else exc
        if isinstance(reason, TotalTimeoutError) or (isinstance(reason, TimeoutError) and self.deadline.passed()):
            return self.deadline.error().args[0]
        if isinstance(reason, TimeoutError):
            if str(reason) and "timed out" not in str(reason):  # raised by Stall
                return f"too slow ({reason}; the limit is {MIN_PROGRESS} bytes per {self.timeout:g} s)"
            return f"no answer from the server within {self.timeout:g} s (timed out)"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused (nothing is listening at that address)"
        if isinstance(reason, socket.gaierror):
            return "cannot resolve the host name (no network, or a wrong URL)"
        if isinstance(reason, http.client.IncompleteRead):
            return "the connection closed before the end of the file"
        return f"{type(reason).__name__}: {reason}"


def local_path(url: str) -> Path | None:
    """The file a ``file://`` URL or a plain path points to; ``None`` for http(s) and ``hf-hub:`` URLs.

    A ``local-dir:`` URL, or a path to a folder, means the ``model.safetensors`` in that folder (timm's convention).

    Example:
        >>> local_path("file:///tmp/a%20b.pt"), local_path("https://x.org/a.pt"), local_path("local-dir:/m")
        (PosixPath('/tmp/a b.pt'), None, PosixPath('/m/model.safetensors'))
    """
    if url.startswith("hf-hub:"):
        return None
    if url.startswith("local-dir:"):
        return hub_weights(url)
    if "://" not in url:
        path = Path(url).expanduser()
    elif urlparse(url).scheme.lower() == "file":
        path = Path(url2pathname(unquote(urlparse(url).path)))
    else:
        return None
    return path / WEIGHTS_NAME if path.is_dir() else path


class _TooLarge(Exception):
    """More bytes than the entry's declared size."""
