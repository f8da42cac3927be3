"""Export of a run, loading it back through a zoo entry, and the zoo CLI (including timm's pretrained_cfg_overlay)."""

import hashlib

import pytest
import safetensors.torch
import timm
import torch
import yaml

import visionssl as vs
from visionssl.cli import main
from visionssl.engine.checkpoint import atomic_save


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONSSL_ZOO", raising=False)
    monkeypatch.delenv("VISIONSSL_OFFLINE", raising=False)


def make_run(run_dir, backbone_name="resnet10t_cifar"):
    """A run directory holding a checkpoint in the documented visionssl format (built by hand)."""
    backbone = vs.create_backbone(backbone_name)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    method_state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    method_state.update(
        {"projector.0.weight": torch.randn(16, backbone.num_features), "projector.0.bias": torch.randn(16)}
    )
    ckpt = {
        "format": "visionssl",
        "version": 1,
        "config": {
            "method": {"name": "simclr", "temperature": 0.5},
            "backbone": {"name": backbone_name, "kwargs": {}},
            "data": {"name": "synthetic", "image_size": 18},
            "optim": {"name": "lars", "batch_size": 8},
            "train": {"epochs": 2},
        },
        "method": method_state,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 2,
        "step": 10,
        "metrics": {"train/loss": 3.2, "knn/top1": 41.5},
    }
    atomic_save(ckpt, run_dir / "checkpoints" / "last.pt")
    return backbone.eval()


def test_export_then_load_through_a_zoo_entry_is_bit_identical(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "demo run"
    backbone = make_run(run)

    exported = vs.zoo.export_run(run)

    assert exported.path == run / "export" / "demo-run.safetensors"
    assert exported.sha256 == hashlib.sha256(exported.path.read_bytes()).hexdigest()
    assert exported.sha256_path.read_text() == f"{exported.sha256}  demo-run.safetensors\n"
    weights = safetensors.torch.load_file(exported.path)
    assert set(weights) == set(backbone.state_dict())  # the backbone alone: no projector, no optimizer
    entry = yaml.safe_load(exported.entry_path.read_text())["models"][0]
    assert (
        entry["format"] == "visionssl" and entry["backbone"] == "resnet10t_cifar" and entry["sha256"] == exported.sha256
    )
    assert entry["recipe"] == {"dataset": "synthetic", "epochs": 2, "batch_size": 8}
    assert [m["name"] for m in entry["metrics"]] == ["knn/top1"]

    monkeypatch.setenv("VISIONSSL_ZOO", str(exported.entry_path))
    loaded = vs.zoo.load("demo-run").eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = backbone(x)
        assert torch.equal(loaded(x), expected)
    assert vs.zoo.cached_path(vs.zoo.info("demo-run")).exists() is False  # a local file is used in place

    # the same file through a file:// URL, an exported-file path, and the run itself
    entry["urls"] = [exported.path.as_uri()]
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(tmp_path / "zoo.yaml"))
    for net in (vs.zoo.load("demo-run"), vs.zoo.load_backbone(exported.path), vs.zoo.load_backbone(run)):
        with torch.no_grad():
            assert torch.equal(net.eval()(x), expected)


def test_export_refuses_what_is_not_a_run(tmp_path):
    atomic_save({"state_dict": {}}, tmp_path / "other" / "last.pt")
    with pytest.raises(vs.errors.CheckpointError, match="is not a visionssl checkpoint"):
        vs.zoo.export_run(tmp_path / "other")


def test_cli_export_and_zoo_commands(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r1"
    make_run(run)
    out = tmp_path / "pub" / "mine.safetensors"
    assert main(["export", str(run), "--out", str(out), "--name", "mine"]) == 0
    assert "sha256:" in capsys.readouterr().out and out.is_file()

    monkeypatch.setenv("VISIONSSL_ZOO", str(tmp_path / "pub" / "mine.zoo.yaml"))
    assert main(["zoo", "list", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| Name | Method | Backbone |") and "`mine` | simclr | resnet10t_cifar" in table
    assert "`moco_v3_rn50_1000ep` | moco_v3 | resnet50 | 1000 | imagenet_linear_top1: 74.6" in table
    assert main(["zoo", "list", "moco_v1*"]) == 0
    assert capsys.readouterr().out.startswith("moco_v1_rn50_200ep")
    assert main(["zoo", "info", "mine"]) == 0
    assert "format: visionssl" in capsys.readouterr().out
    assert main(["zoo", "verify", "mine"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    assert main(["zoo", "verify", "moco_v1_rn50_200ep"]) == 2
    assert "is not downloaded" in capsys.readouterr().err
    assert main(["zoo", "download", "moco_v1_rn50_200ep", "--offline"]) == 2
    assert "offline mode" in capsys.readouterr().err


def test_cli_convert_then_timm_pretrained_cfg_overlay(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = timm.create_model("resnet18", num_classes=0).eval()
    upstream = tmp_path / "checkpoint_0099.pth.tar"
    torch.save(
        {
            "epoch": 100,
            "arch": "resnet18",
            "state_dict": {"module.encoder." + k: v for k, v in reference.state_dict().items()},
        },
        upstream,
    )
    out = tmp_path / "simsiam_timm.safetensors"
    assert main(["zoo", "convert", str(upstream), "--format", "simsiam", "--out", str(out)]) == 2
    assert "needs --format" in capsys.readouterr().err
    assert (
        main(["zoo", "convert", str(upstream), "--format", "simsiam", "--backbone", "resnet18", "--out", str(out)]) == 0
    )
    assert "pretrained_cfg_overlay" in capsys.readouterr().out

    net = timm.create_model(
        "resnet18", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(out))
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
