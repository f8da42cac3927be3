"""Downloads that must stop and a cache that must be re-checked (issue 23), against a local HTTP server on 127.0.0.1:
the declared size, the idle and total timeouts, a killed download's ``.part``, a cached file overwritten or put by hand."""

import hashlib
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

import visionssl as vs
from visionssl.cli import main
from visionssl.zoo import ZooError

DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()


class Server:
    """``mode``: "ok" (DATA, with Range), "flood" (64 MiB, no Content-Length), "trickle" (1 byte/s), "slow" (500 B/s),
    "headers" (the status line, then a header trickled a byte every 0.5 s for 20 s)."""

    def __init__(self):
        self.mode, self.sent, self.ranges = "ok", 0, []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.ranges.append(self.headers.get("Range"))
                if server.mode == "headers":  # the status line, then a header one byte every 0.5 s (for 20 s)
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    self.wfile.flush()
                    for _ in range(40):
                        if server.stop.wait(0.5):
                            return
                        try:
                            self.wfile.write(b"a")
                            self.wfile.flush()
                        except (BrokenPipeError, ConnectionResetError):
                            return
                    return
                start = int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
                if server.mode == "ok":
                    self.send_header("Content-Length", str(len(DATA) - start))
                self.end_headers()
                try:
                    if server.mode == "ok":
                        self.wfile.write(DATA[start:])
                    elif server.mode == "flood":
                        for _ in range(1024):
                            self.wfile.write(b"\0" * 65536)
                            server.sent += 65536
                    else:  # trickle: DATA, one byte a second (slow, never silent)
                        for b in DATA[start:]:
                            if server.stop.wait(1.0 if server.mode == "trickle" else 0.002):
                                return
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/w.pth"


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.stop.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONSSL_OFFLINE", raising=False)
    return tmp_path / "home"


def use_zoo(tmp_path, monkeypatch, urls, sha256=SHA, size=len(DATA), **extra):  # noqa: B008  (DATA is a constant)
    entry = {
        "name": "blob",
        "method": "test",
        "backbone": "resnet18",
        "urls": urls,
        "sha256": sha256,
        "size": size,
        "format": "torchvision",
        "recipe": {"dataset": "x", "epochs": 1, "batch_size": 2},
        "metrics": [],
        "paper": None,
        "license": None,
        **extra,
    }
    if sha256 is None:
        entry["note"] = "no checksum published"
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(path))
    return path


def files(home):
    root = home / "zoo"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_stream_larger_than_the_declared_size_is_stopped_at_once(server, home, tmp_path, monkeypatch):
    server.mode = "flood"  # 64 MiB for an entry declaring 1000 bytes, without Content-Length
    use_zoo(tmp_path, monkeypatch, [server.url()], sha256=None, size=1000)
    with pytest.raises(ZooError, match="passed the size the zoo entry blob declares \\(1000 bytes\\) and was stopped"):
        vs.zoo.download("blob", progress=False)
    time.sleep(0.2)
    assert server.sent < 8 << 20  # stopped after a few chunks, not 64 MiB
    assert files(home) == []  # nothing kept


def test_an_announced_content_length_above_the_size_is_refused_before_reading(server, home, tmp_path, monkeypatch):
    use_zoo(tmp_path, monkeypatch, [server.url()], size=1000)  # the server announces 200,000
    with pytest.raises(ZooError, match="announces 200000 bytes, but the zoo entry blob declares size 1000"):
        vs.zoo.download("blob", progress=False)
    assert files(home) == []


def test_a_trickling_server_is_given_up_after_the_idle_timeout(server, home, tmp_path, monkeypatch, capsys):
    server.mode = "trickle"  # 1 byte/s: never silent, so a plain socket timeout would wait 200,000 s
    use_zoo(tmp_path, monkeypatch, [server.url()])
    start = time.monotonic()
    code = main(["zoo", "download", "blob", "--timeout", "2", "--no-progress"])
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and "too slow" in err and took < 6, (took, err)


def test_the_total_timeout_bounds_a_fast_enough_but_long_download(server, home, tmp_path, monkeypatch):
    server.mode = "slow"  # 500 bytes/s: above 1 KiB per 10 s, so only the total limit stops it
    use_zoo(tmp_path, monkeypatch, [server.url()])
    start = time.monotonic()
    with pytest.raises(ZooError, match="took longer than the total timeout of 1.5 s"):
        vs.zoo.download("blob", progress=False, timeout=10, total_timeout=1.5)
    assert time.monotonic() - start < 4


@pytest.mark.parametrize("part", [False, True], ids=["fresh", "resuming"])
def test_a_server_trickling_its_headers_is_given_up_at_the_total_timeout(
    server, home, tmp_path, monkeypatch, capsys, part
):
    server.mode = "headers"  # each read gets a byte within the idle limit: only a deadline ends it
    use_zoo(tmp_path, monkeypatch, [server.url()])
    stale = None
    if part:  # a kept .part from an earlier try: the header timeout must not leave it half-written or grown
        stale = home / "zoo" / "blob" / f"w.pth.{hashlib.sha1(server.url().encode()).hexdigest()[:8]}.part"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(DATA[:1000])
    start = time.monotonic()
    code = main(["zoo", "download", "blob", "--timeout", "1", "--total-timeout", "2.5", "--no-progress"])
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and took < 4.5, (took, err)  # the mistake: alive as long as the server trickles
    assert err.count("\n") == 1 and err.startswith("visionssl: error: "), err
    assert server.url() in err and "total timeout of 2.5 s" in err, err
    assert files(home) == ([stale.name] if part else [])
    if part:
        assert stale.read_bytes() == DATA[:1000]


def test_a_killed_download_leaves_only_its_part_which_the_next_try_resumes(server, home, tmp_path, monkeypatch):
    server.mode = "slow"
    use_zoo(tmp_path, monkeypatch, [server.url()])
    pid = os.fork()  # a child that already has visionssl imported (a fresh interpreter takes many seconds)
    if pid == 0:
        try:
            vs.zoo.download("blob", progress=False)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 100 for p in (home / "zoo").rglob("*.part")):
        assert time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    left = files(home)
    assert len(left) == 1 and left[0].startswith("w.pth.") and left[0].endswith(".part")  # the documented .part only
    kept = next((home / "zoo").rglob("*.part")).stat().st_size
    server.mode = "ok"
    path = vs.zoo.download("blob", progress=False)
    assert path.read_bytes() == DATA and server.ranges[-1] == f"bytes={kept}-"  # resumed, then verified
    assert files(home) == ["w.pth", "w.pth.sha256", "w.pth.stat"]


def test_a_part_larger_than_the_declared_size_is_removed_before_downloading(server, home, tmp_path, monkeypatch):
    use_zoo(tmp_path, monkeypatch, [server.url()])
    vs.zoo.download("blob", progress=False)
    dest = home / "zoo" / "blob" / "w.pth"
    dest.unlink()
    stale = dest.with_name(f"w.pth.{hashlib.sha1(server.url().encode()).hexdigest()[:8]}.part")
    stale.write_bytes(b"x" * (len(DATA) + 10))
    assert vs.zoo.download("blob", progress=False).read_bytes() == DATA and server.ranges[-1] is None
    assert not stale.exists()


@pytest.mark.parametrize("sha256", [SHA, None], ids=["published-sha256", "trust-on-first-use"])
def test_a_cached_file_overwritten_with_random_bytes_is_not_returned(server, home, tmp_path, monkeypatch, sha256):
    use_zoo(tmp_path, monkeypatch, [server.url()], sha256=sha256)
    path = vs.zoo.download("blob", progress=False)
    path.write_bytes(os.urandom(len(DATA)))  # same size, new mtime
    monkeypatch.setenv("VISIONSSL_OFFLINE", "1")
    with pytest.raises(ZooError, match="cached file"):
        vs.zoo.download("blob", progress=False)  # the mistake: returned with exit 0
    with pytest.raises(ZooError):
        vs.zoo.verify("blob")
    monkeypatch.delenv("VISIONSSL_OFFLINE")
    assert vs.zoo.download("blob", progress=False).read_bytes() == DATA  # a new download replaces it


def test_a_file_placed_by_hand_is_checked_against_the_published_partial_hash_offline(home, tmp_path, monkeypatch):
    good = os.urandom(5000)
    prefix = hashlib.sha256(good).hexdigest()[:8]  # torchvision style: the hash prefix in the file name
    use_zoo(
        tmp_path,
        monkeypatch,
        [f"https://example.invalid/w-{prefix}.pth"],
        sha256=None,
        size=None,
        published_hash=f"sha256:{prefix}",
    )
    monkeypatch.setenv("VISIONSSL_OFFLINE", "1")
    dest = home / "zoo" / "blob" / f"w-{prefix}.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(os.urandom(5000))  # the wrong file, put there by hand
    with pytest.raises(ZooError, match=f"does not start with {prefix}"):
        vs.zoo.download("blob", progress=False)  # the mistake: accepted offline without a check
    dest.write_bytes(good)
    assert vs.zoo.download("blob", progress=False) == dest
    assert (dest.parent / f"{dest.name}.sha256").read_text().split()[0] == hashlib.sha256(good).hexdigest()


def test_a_cache_folder_that_cannot_be_created_is_a_user_error(server, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VISIONSSL_HOME", str(home))
    use_zoo(tmp_path, monkeypatch, [server.url()])
    assert main(["zoo", "download", "blob", "--no-progress"]) == 2  # the mistake: NotADirectoryError, exit 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot create the zoo cache folder {home / 'zoo' / 'blob'}" in err, err
    assert "VISIONSSL_HOME" in err and home.read_text().startswith("a file")


def test_zoo_pin_is_the_teams_step_a_pinned_entry_is_verified_and_size_bounded(server, tmp_path, monkeypatch):
    # like every packaged entry: sha256 and size null, so a first download is trusted and unbounded
    zoo_file = use_zoo(tmp_path, monkeypatch, [server.url()], sha256=None, size=None)
    team = tmp_path / "team_zoo.yaml"
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "first"))
    with pytest.warns(vs.zoo.UnverifiedDownloadWarning):
        assert main(["zoo", "pin", "blob", "--file", str(team), "--no-progress"]) == 0
    pinned = yaml.safe_load(team.read_text())["models"][0]
    assert (pinned["sha256"], pinned["size"]) == (SHA, len(DATA))

    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "teammate"))  # a teammate with an empty cache
    monkeypatch.setenv("VISIONSSL_ZOO", f"{zoo_file}{os.pathsep}{team}")
    monkeypatch.setitem(globals(), "DATA", os.urandom(len(DATA)))  # the server now serves other bytes
    with pytest.raises(ZooError, match="sha256 mismatch"):
        vs.zoo.download("blob", progress=False)
    server.mode = "flood"  # and now far more than the pinned size
    with pytest.raises(ZooError, match=f"passed the size the zoo entry blob declares \\({pinned['size']} bytes"):
        vs.zoo.download("blob", progress=False)
    assert files(tmp_path / "teammate") == []


def test_a_cached_file_changed_with_its_size_and_mtime_restored_is_caught_by_zoo_verify(
    server, home, tmp_path, monkeypatch, capsys
):
    use_zoo(tmp_path, monkeypatch, [server.url()])
    path = vs.zoo.download("blob", progress=False)
    st = path.stat()
    path.write_bytes(os.urandom(len(DATA)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert vs.zoo.download("blob", progress=False) == path  # documented: size and mtime match, no re-hash
    assert main(["zoo", "verify", "blob"]) == 2  # verify always re-hashes
    assert "sha256 mismatch" in capsys.readouterr().err
