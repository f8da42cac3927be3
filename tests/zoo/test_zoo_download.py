"""Downloads against a local HTTP server on 127.0.0.1: verify, resume, mismatch, 404, timeout, refused, offline, pin."""

import hashlib
import os
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

import visionssl as vs
from visionssl.zoo import UnverifiedDownloadWarning, ZooError
from visionssl.zoo.catalog import PACKAGED_ZOO

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class FileServer:
    """Serves ``files`` with optional Range support; ``modes[name]`` is "ok", "404", "hang" or "drop" (once)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.ranges = True
        self.wrong_range = False  # answer a Range request with 206 but the whole file
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                mode = server.modes.get(name, "ok")
                if mode == "hang":  # accept the connection, never answer
                    server.release.wait(10)
                    return
                if name not in server.files or mode == "404":
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                range_header = self.headers.get("Range")
                if server.ranges and range_header and range_header.startswith("bytes="):
                    start = 0 if server.wrong_range else int(range_header[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "drop":  # send half, then the connection drops
                    server.modes[name] = "ok"
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONSSL_OFFLINE", raising=False)
    return tmp_path / "home"


def use_zoo(tmp_path, monkeypatch, *entries) -> "os.PathLike":
    path = tmp_path / "project_zoo.yaml"
    path.write_text(yaml.safe_dump({"models": [entry(**e) for e in entries]}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(path))
    return path


def entry(name="blob", urls=(), sha256=SHA, fmt="torchvision", backbone="resnet18", **extra):
    out = {
        "name": name,
        "method": "test",
        "backbone": backbone,
        "urls": list(urls),
        "sha256": sha256,
        "size": None,
        "format": fmt,
        "recipe": {"dataset": "synthetic", "epochs": 1, "batch_size": 2},
        "metrics": [],
        "paper": None,
        "license": None,
    }
    if sha256 is None:
        out["note"] = "no checksum published"
    return out | extra


def cache_files(home) -> list[str]:
    root = home / "zoo"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_download_streams_verifies_and_caches(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    path = vs.zoo.download("blob", progress=True)
    assert path == home / "zoo" / "blob" / "w.pth" and path.read_bytes() == DATA
    assert cache_files(home) == ["blob/w.pth", "blob/w.pth.sha256", "blob/w.pth.stat"]
    assert (home / "zoo" / "blob" / "w.pth.sha256").read_text() == f"{SHA}  w.pth\n"
    assert vs.zoo.download("blob") == path and len(server.requests) == 1  # the second call is a cache hit
    assert vs.zoo.verify("blob") == SHA


def test_interrupted_download_resumes_with_range(server, home, tmp_path, monkeypatch):
    server.files["w.pth"], server.modes["w.pth"] = DATA, "drop"
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    with pytest.raises(
        ZooError, match=r"stopped after 150000 of 300000 bytes .* is kept: run the same command again to resume"
    ):
        vs.zoo.download("blob", progress=False)
    (part,) = (home / "zoo" / "blob").glob("w.pth.*.part")
    assert part.stat().st_size == 150_000 and not (home / "zoo" / "blob" / "w.pth").exists()

    path = vs.zoo.download("blob", progress=False)
    assert server.requests[-1] == ("w.pth", "bytes=150000-")
    assert path.read_bytes() == DATA and cache_files(home) == ["blob/w.pth", "blob/w.pth.sha256", "blob/w.pth.stat"]


def test_interrupted_download_without_range_support_keeps_nothing(server, home, tmp_path, monkeypatch):
    server.files["w.pth"], server.modes["w.pth"], server.ranges = DATA, "drop", False
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    with pytest.raises(ZooError, match="does not support resuming, so the partial file was deleted"):
        vs.zoo.download("blob", progress=False)
    assert cache_files(home) == []


def test_resume_restarts_when_the_server_ignores_range(server, home, tmp_path, monkeypatch):
    server.files["w.pth"], server.modes["w.pth"] = DATA, "drop"
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    with pytest.raises(ZooError):
        vs.zoo.download("blob", progress=False)
    server.ranges = False  # now answers 200 with the whole file to the Range request
    assert vs.zoo.download("blob", progress=False).read_bytes() == DATA


def test_resume_restarts_when_the_server_sends_another_range(server, home, tmp_path, monkeypatch):
    server.files["w.pth"], server.modes["w.pth"] = DATA, "drop"
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    with pytest.raises(ZooError):
        vs.zoo.download("blob", progress=False)
    server.wrong_range = True
    assert vs.zoo.download("blob", progress=False).read_bytes() == DATA
    assert [r[1] for r in server.requests] == [None, "bytes=150000-", None]


def test_hash_mismatch_deletes_everything(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")], sha256="0" * 64))
    with pytest.raises(
        ZooError, match=rf"{server.url('w.pth')}: sha256 mismatch, got {SHA} but the zoo .* expects 0000"
    ):
        vs.zoo.download("blob", progress=False)
    assert cache_files(home) == []


def test_published_hash_prefix_is_checked(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    md5 = hashlib.md5(DATA).hexdigest()
    use_zoo(
        tmp_path,
        monkeypatch,
        dict(name="bad", urls=[server.url("w.pth")], published_hash="md5:00000000"),
        dict(name="good", urls=[server.url("w.pth")], published_hash=f"md5:{md5[:8]}"),
    )
    with pytest.raises(ZooError, match=f"md5 is {md5}, which does not start with 00000000"):
        vs.zoo.download("bad", progress=False)
    assert cache_files(home) == []
    assert vs.zoo.download("good", progress=False).read_bytes() == DATA


def test_404_names_the_url_and_what_to_do(server, home, tmp_path, monkeypatch):
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("gone.pth")]))
    with pytest.raises(
        ZooError,
        match=rf"(?s){server.url('gone.pth')}: the server answered HTTP 404 .*What to do:.*put it at "
        rf"{home / 'zoo' / 'blob' / 'gone.pth'}",
    ):
        vs.zoo.download("blob", progress=False)
    assert cache_files(home) == []


def test_server_that_never_answers_times_out(server, home, tmp_path, monkeypatch):
    server.files["w.pth"], server.modes["w.pth"] = DATA, "hang"
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    with pytest.raises(ZooError, match=r"no answer from the server within 0.3 s \(timed out\)"):
        vs.zoo.download("blob", timeout=0.3, progress=False)
    assert cache_files(home) == []


def test_refused_connection(home, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    use_zoo(tmp_path, monkeypatch, dict(urls=[f"http://127.0.0.1:{port}/w.pth"]))
    with pytest.raises(ZooError, match=rf"127.0.0.1:{port}/w.pth: connection refused"):
        vs.zoo.download("blob", progress=False)
    assert cache_files(home) == []


def test_mirrors_are_tried_in_order(server, home, tmp_path, monkeypatch):
    server.files["mirror.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("primary.pth"), server.url("mirror.pth")]))
    path = vs.zoo.download("blob", progress=False)
    assert [r[0] for r in server.requests] == ["primary.pth", "mirror.pth"]
    assert path.name == "primary.pth" and path.read_bytes() == DATA  # cached under the primary name


def test_offline_mode_uses_only_the_cache(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    monkeypatch.setenv("VISIONSSL_OFFLINE", "1")
    with pytest.raises(ZooError, match=r"offline mode .*blob is not in the cache at .*blob/w.pth"):
        vs.zoo.download("blob")
    assert server.requests == [] and cache_files(home) == []
    assert vs.zoo.download("blob", offline=False, progress=False).read_bytes() == DATA
    assert vs.zoo.download("blob") == home / "zoo" / "blob" / "w.pth" and len(server.requests) == 1


def test_stale_cached_file_is_replaced(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    stale = home / "zoo" / "blob" / "w.pth"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older release")  # e.g. put there by hand, no sidecar
    with pytest.raises(ZooError, match="the cached file has sha256 .* the zoo expects"):
        vs.zoo.download("blob", offline=True)
    assert vs.zoo.download("blob", progress=False).read_bytes() == DATA


def test_unverified_download_warns_and_pin_records_the_hash(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    zoo_file = use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")], sha256=None))
    packaged = PACKAGED_ZOO.read_bytes()
    with pytest.warns(UnverifiedDownloadWarning, match=f"trust on first use.*sha256 is {SHA}.*visionssl zoo pin blob"):
        vs.zoo.download("blob", progress=False)
    assert vs.zoo.verify("blob") == SHA

    digest, written = vs.zoo.pin("blob")
    assert (digest, written) == (SHA, zoo_file)  # the entry's own (user) zoo file
    pinned = vs.zoo.info("blob")
    assert pinned.sha256 == SHA and pinned.size == len(DATA) and "trust on first use" in pinned.note
    assert PACKAGED_ZOO.read_bytes() == packaged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vs.zoo.download("blob", force=True, progress=False)  # now verified: no warning
    assert vs.zoo.pin("blob") == (SHA, None)


def test_pin_to_an_explicit_user_file(server, home, tmp_path, monkeypatch):
    server.files["w.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")], sha256=None))
    with pytest.warns(UnverifiedDownloadWarning):
        digest, written = vs.zoo.pin("blob", file=home / "zoo.yaml", progress=False)
    assert written == home / "zoo.yaml" and yaml.safe_load(written.read_text())["models"][0]["sha256"] == digest


def test_file_urls_and_local_paths_are_used_in_place(home, tmp_path, monkeypatch):
    weights = tmp_path / "weights dir" / "w.pth"
    weights.parent.mkdir()
    weights.write_bytes(DATA)
    use_zoo(
        tmp_path,
        monkeypatch,
        dict(name="by_path", urls=["weights dir/w.pth"]),
        dict(name="by_url", urls=[weights.as_uri()]),
        dict(name="bad", urls=[weights.as_uri()], sha256="1" * 64),
    )
    assert vs.zoo.download("by_path") == weights and vs.zoo.download("by_url") == weights
    with pytest.raises(ZooError, match="sha256 mismatch"):
        vs.zoo.download("bad")
    assert cache_files(home) == []


def test_load_over_http_gives_the_reference_features(server, home, tmp_path, monkeypatch):
    reference = vs.create_backbone("resnet10t_cifar").eval()
    upstream = {
        "epoch": 200,
        "arch": "resnet10t",
        "optimizer": {},
        "state_dict": {"module.encoder_q." + k: v for k, v in reference.state_dict().items()},
    }
    path = tmp_path / "moco.pth.tar"
    torch.save(upstream, path)
    server.files["moco.pth.tar"] = path.read_bytes()
    use_zoo(
        tmp_path,
        monkeypatch,
        dict(
            name="tiny_moco",
            urls=[server.url("moco.pth.tar")],
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            fmt="moco",
            backbone="resnet10t_cifar",
        ),
    )
    net = vs.zoo.load("tiny_moco", progress=False).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_a_folder_where_the_cached_file_belongs_is_a_storage_error_before_any_download(
    server, home, tmp_path, monkeypatch
):
    from visionssl.errors import StorageError

    server.files["w.pth"] = DATA
    use_zoo(tmp_path, monkeypatch, dict(urls=[server.url("w.pth")]))
    (home / "zoo" / "blob" / "w.pth").mkdir(parents=True)
    (home / "zoo" / "blob" / "w.pth" / "mine.txt").write_text("kept")
    with pytest.raises(StorageError, match=r"w.pth exists and is not a file .* set VISIONSSL_HOME"):
        vs.zoo.download("blob", progress=False)
    assert not server.requests and (home / "zoo" / "blob" / "w.pth" / "mine.txt").read_text() == "kept"
