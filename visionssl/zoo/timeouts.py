"""The time limits of a download, enforced on every socket read: connect, status line, headers and body.

``urllib``'s ``timeout`` is per socket operation, so a server that sends a header byte every second
never trips it. Here each read gets ``min(idle timeout, time left before the deadline)``, and a read
that would start after the deadline fails at once; so ``total_timeout`` bounds the whole exchange,
including the header phase. (Name resolution happens before the first socket exists and is bounded
by the system resolver, not by these limits.)

Example:
    >>> deadline = Deadline(None)
    >>> deadline.read_timeout(30.0), deadline.passed()
    (30.0, False)
    >>> Deadline(0.0).passed()
    True
"""

from __future__ import annotations

import http.client
import io
import socket
import time
import urllib.request
from typing import Any

MIN_PROGRESS = 1024  # bytes per `timeout` seconds: slower counts as stalled (a server trickling 1 byte/s)


class TotalTimeoutError(TimeoutError):
    """The whole download (connect, headers, body) took longer than its total timeout."""


class Deadline:
    """When a download must be over: ``total`` seconds from now (``None``: no limit)."""

    def __init__(self, total: float | None):
        self.total = total
        self.at = None if total is None else time.monotonic() + total

    def passed(self) -> bool:
        """Whether the deadline is behind us.

        Example:
            >>> Deadline(60.0).passed()
            False
        """
        return self.at is not None and time.monotonic() >= self.at

    def error(self) -> TotalTimeoutError:
        """The error that ends a download at its deadline (its message names the limit).

        Example:
            >>> str(Deadline(2.5).error())
            'took longer than the total timeout of 2.5 s'
        """
        return TotalTimeoutError(f"took longer than the total timeout of {self.total:g} s")

    def read_timeout(self, idle: float) -> float:
        """The socket timeout for the next operation: the idle limit, or less if the deadline is nearer.

        Raises ``TotalTimeoutError`` once the deadline has passed.

        Example:
            >>> Deadline(1.0).read_timeout(30.0) <= 1.0
            True
        """
        if self.at is None:
            return idle
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error()
        return min(idle, left)


def open_url(request: urllib.request.Request, timeout: float, deadline: Deadline) -> http.client.HTTPResponse:
    """``urlopen(request, timeout)`` with every socket operation also bounded by ``deadline``.

    Redirects, proxies and HTTP errors behave as with ``urlopen`` (an error status raises ``HTTPError``).

    Example (a deadline already past: not even the connection is tried):
        >>> open_url(urllib.request.Request("http://127.0.0.1:9/"), 1.0, Deadline(0.0))
        Traceback (most recent call last):
        ...
        urllib.error.URLError: <urlopen error took longer than the total timeout of 0 s>
    """
    opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline))
    return opener.open(request, timeout=timeout)


class Stall:
    """Ends a download that is too slow: less than ``MIN_PROGRESS`` bytes in ``timeout`` s, or past ``deadline``.

    Example:
        >>> stall = Stall(30.0, Deadline(None))
        >>> stall.check(4096)
    """

    def __init__(self, timeout: float, deadline: Deadline):
        self.timeout, self.deadline = timeout, deadline
        self.window_start, self.window_bytes = time.monotonic(), 0

    def check(self, n: int) -> None:
        """Counts ``n`` more bytes; raises ``TimeoutError`` if the download is too slow or past its deadline."""
        if self.deadline.passed():
            raise self.deadline.error()
        now = time.monotonic()
        self.window_bytes += n
        if now - self.window_start >= self.timeout:
            if self.window_bytes < MIN_PROGRESS:
                raise TimeoutError(f"{self.window_bytes} bytes in {now - self.window_start:.0f} s")
            self.window_start, self.window_bytes = now, 0


class _DeadlineReader(io.RawIOBase):
    """A socket's raw reader that sets the socket timeout from the deadline before each read."""

    def __init__(self, sock: socket.socket, idle: float, deadline: Deadline):
        super().__init__()
        self._raw, self._sock, self._idle, self._deadline = sock.makefile("rb", buffering=0), sock, idle, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._deadline.read_timeout(self._idle))
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:
            if self._deadline.passed():
                raise self._deadline.error() from None
            raise

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose reader (what ``http.client`` reads the response from) honours the deadline."""

    def __init__(self, sock: socket.socket, idle: float, deadline: Deadline):
        self._sock, self._idle, self._deadline = sock, idle, deadline

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:  # http.client asks for "rb" only
        return io.BufferedReader(_DeadlineReader(self._sock, self._idle, self._deadline))

    def __getattr__(self, name: str) -> Any:  # sendall, close, ...: the socket's own
        return getattr(self._sock, name)


class _DeadlineConnection:
    """Mixed into ``HTTPConnection`` / ``HTTPSConnection``: connect within the deadline, then wrap the socket."""

    timeout: float
    sock: Any

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        idle = self.timeout
        self.timeout = self.deadline.read_timeout(idle)  # connect and TLS handshake, within both limits
        try:
            super().connect()  # type: ignore[misc]
        except TimeoutError:
            if self.deadline.passed():
                raise self.deadline.error() from None
            raise
        finally:
            self.timeout = idle
        self.sock = _DeadlineSocket(self.sock, idle, self.deadline)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_DeadlineHTTPConnection, req, deadline=self.deadline, **kwargs)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_DeadlineHTTPSConnection, req, deadline=self.deadline, **kwargs)
