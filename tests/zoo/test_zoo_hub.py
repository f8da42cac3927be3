"""``visionssl export --format hub``: timm's Hugging Face folder, loaded offline by timm ``local-dir:`` with the
run's features; zoo entries that point at such a folder or at ``hf-hub:`` names; bad inputs in one line."""

import functools
import hashlib
import json
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import timm
import torch
import yaml

import visionssl as vs
from visionssl.cli import main
from visionssl.engine.checkpoint import atomic_save
from visionssl.engine.smoke import smoke_overrides


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network: timm's hub is off and any connection outside this machine fails the test."""
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VISIONSSL_ZOO", raising=False)
    monkeypatch.delenv("VISIONSSL_OFFLINE", raising=False)
    connect = socket.socket.connect

    def local_only(self, address):
        assert isinstance(address, tuple) and address[0] == "127.0.0.1", f"network access to {address}"
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run: SimCLR on a timm resnet10t, 1 epoch on 32 synthetic 16 px images, with its online kNN."""
    run = tmp_path_factory.mktemp("runs") / "rn10t"
    overrides = smoke_overrides("data.name=synthetic:32", "train.knn_every=1", "train.precision=fp32", "optim.lr=0.05")
    argv = ["pretrain", "--method", "simclr", "--backbone", "resnet10t", "--epochs", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(run), *overrides]) == 0
    return run


def hand_made_run(run_dir, backbone_name, kwargs, image_size=16):
    """A run directory holding a visionssl checkpoint of ``backbone_name(**kwargs)`` with perturbed weights."""
    backbone = vs.create_backbone(backbone_name, **kwargs)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    config = {
        "method": {"name": "byol"},
        "backbone": {"name": backbone_name, "kwargs": kwargs},
        "augment": {"name": None, "image_size": image_size, "kwargs": {}},
        "data": {"name": "synthetic", "image_size": 18},
        "optim": {"name": "adamw", "batch_size": 8},
        "train": {"epochs": 1},
    }
    method = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    ckpt = {"format": "visionssl", "version": 1, "config": config, "method": method, "epoch": 1, "step": 4}
    atomic_save(ckpt | {"optimizer": {"state": {}, "param_groups": []}, "metrics": {}}, run_dir / "checkpoints/last.pt")
    return backbone.eval()


def test_hub_folder_loads_in_timm_with_the_runs_features(trained_run, tmp_path, capsys):
    out = tmp_path / "hub" / "rn10t-simclr"
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(out), "--license", "apache-2.0"]) == 0
    assert "sha256:" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    model = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    backbone = vs.zoo.load_backbone(trained_run).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = backbone(x)
        assert torch.equal(model(x), expected)
        assert torch.equal(vs.zoo.load_backbone(out / "model.safetensors").eval()(x), expected)  # visionssl too
        assert torch.equal(vs.zoo.load_backbone(out).eval()(x), expected)  # the folder itself is a checkpoint spec

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 0 and config["num_features"] == 512
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 16, 16] and pre["crop_pct"] == 1.0 and pre["interpolation"] == "bilinear"
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert tuple(timm.data.resolve_data_config({}, model=model)["input_size"]) == (3, 16, 16)

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: timm\n")
    for fact in (
        "simclr",
        "`resnet10t`",
        "synthetic:32",
        "| epochs | 1 (of 1 planned) |",
        "| batch size | 16 (global) |",
    ):
        assert fact in card, fact
    assert "| knn/top1 |" in card and "k=200, T=0.07, views=16 px" in card
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() in card


def test_timm_kwargs_go_to_model_args_and_one_channel_statistics(tmp_path):
    kwargs = {"img_size": 16, "patch_size": 8, "in_chans": 1}
    backbone = hand_made_run(tmp_path / "vit", "vit_tiny_patch16_224", kwargs)

    record = vs.zoo.export_hub(tmp_path / "vit", tmp_path / "vit-hub")

    assert record.sha256 == hashlib.sha256(record.weights_path.read_bytes()).hexdigest()
    again = vs.zoo.export_hub(tmp_path / "vit", tmp_path / "again")  # the same run exports to the same bytes
    assert again.sha256 == record.sha256 and again.readme_path.read_bytes() != b""
    assert (
        vs.zoo.export_run(tmp_path / "vit").sha256
        == vs.zoo.export_run(tmp_path / "vit", tmp_path / "b.safetensors").sha256
    )
    config = json.loads(record.config_path.read_text())
    assert config["model_args"] == kwargs and config["pretrained_cfg"]["input_size"] == [1, 16, 16]
    assert config["pretrained_cfg"]["mean"] == [pytest.approx((0.485 + 0.456 + 0.406) / 3, abs=1e-6)]
    model = timm.create_model(f"local-dir:{record.folder}", pretrained=True, num_classes=0).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), backbone(x))
    assert "The run recorded no kNN or linear-probe result" in record.readme_path.read_text()
    assert "license: unknown" in record.readme_path.read_text()


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("visionssl: error: "), err
    return err


def test_bad_inputs_are_one_line_and_write_nothing(trained_run, tmp_path, capsys):
    cifar = tmp_path / "cifar"
    hand_made_run(cifar, "resnet10t_cifar", {})
    out = tmp_path / "out"
    assert main(["export", str(cifar), "--format", "hub", "--out", str(out)]) == 2
    assert "'resnet10t_cifar' is a visionssl backbone, not a timm model" in error_line(capsys)
    assert not out.exists()

    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 2
    assert "--format 'onnx' is not an export format; valid: visionssl, hub" in error_line(capsys)

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(a_file)]) == 2
    assert "is a file" in error_line(capsys) and a_file.read_text() == "mine"
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(a_file / "sub")]) == 2
    assert "cannot create the folder" in error_line(capsys) and a_file.read_text() == "mine"

    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(full)]) == 2
    assert "is not empty; pass --overwrite" in error_line(capsys) and (full / "notes.txt").read_text() == "mine"
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(full), "--overwrite"]) == 0
    assert sorted(p.name for p in full.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(tmp_path / "link")]) == 2
    assert "is a symbolic link" in error_line(capsys) and not any(target.iterdir())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_failed_export_keeps_the_old_folder(trained_run, tmp_path, monkeypatch):
    out = vs.zoo.export_hub(trained_run, tmp_path / "hub").folder
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(folder, net):
        raise RuntimeError("simulated failure after the files were staged")

    monkeypatch.setattr(vs.zoo.export, "_check_timm_loads", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        vs.zoo.export_hub(trained_run, out, overwrite=True, license="mit")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]


def zoo_entry(name, urls, sha256, backbone="resnet10t"):
    return {
        "name": name,
        "method": "simclr",
        "backbone": backbone,
        "urls": urls,
        "sha256": sha256,
        "size": None,
        "format": "visionssl",
        "recipe": {"dataset": "synthetic", "epochs": 1, "batch_size": 16},
        "metrics": [],
        "paper": None,
        "license": None,
    }


@pytest.fixture
def hf_mirror(tmp_path, monkeypatch):
    """A local stand-in for the Hugging Face hub ($HF_ENDPOINT): serves files under tmp_path/mirror."""
    root = tmp_path / "mirror"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    SimpleHTTPRequestHandler.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield root
    httpd.shutdown()
    httpd.server_close()


def test_zoo_entries_point_at_hub_folders_and_hf_hub_names(trained_run, tmp_path, monkeypatch, hf_mirror):
    record = vs.zoo.export_hub(trained_run, tmp_path / "models" / "rn10t")
    published = hf_mirror / "acme" / "rn10t" / "resolve" / "v1" / "model.safetensors"
    published.parent.mkdir(parents=True)
    published.write_bytes(record.weights_path.read_bytes())
    entries = [
        zoo_entry("as_local_dir", ["local-dir:models/rn10t"], record.sha256),  # relative to the zoo file
        zoo_entry("as_path", [str(record.folder)], record.sha256),
        zoo_entry("as_hf_hub", ["hf-hub:acme/rn10t@v1"], record.sha256),
    ]
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"models": entries}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(tmp_path / "zoo.yaml"))

    assert vs.zoo.info("as_local_dir").urls == (f"local-dir:{record.folder}",)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = vs.zoo.load_backbone(trained_run).eval()(x)
        for name in ("as_local_dir", "as_path", "as_hf_hub"):
            assert torch.equal(vs.zoo.load(name, progress=False).eval()(x), expected), name
    assert vs.zoo.fetch(vs.zoo.info("as_local_dir")) == record.weights_path  # used in place, not copied
    assert vs.zoo.cached_path(vs.zoo.info("as_hf_hub")).read_bytes() == published.read_bytes()
    assert vs.zoo.verify("as_local_dir") == record.sha256

    published.write_bytes(b"tampered")  # a changed upload is refused by the sha256, and nothing is cached
    with pytest.raises(vs.errors.ZooError, match="sha256"):
        vs.zoo.download("as_hf_hub", force=True, progress=False)
    with pytest.raises(vs.errors.ZooError, match="offline mode"):
        vs.zoo.download("as_hf_hub", force=True, offline=True)


@pytest.mark.parametrize(
    "url, problem",
    [
        ("hf-hub:just-a-name", "a Hugging Face name is hf-hub:org/name"),
        ("hf-hub:acme/x y", "a Hugging Face name is hf-hub:org/name"),
        ("local-dir:", "names no folder"),
    ],
)
def test_bad_hub_urls_are_refused_when_the_zoo_is_read(tmp_path, monkeypatch, capsys, url, problem):
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"models": [zoo_entry("bad", [url], "0" * 64)]}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(tmp_path / "zoo.yaml"))
    assert main(["zoo", "info", "bad"]) == 2
    assert problem in error_line(capsys)
