"""Checkpoints from strangers: a pickle carrying code is refused (the code never runs), damaged files give
a ``CheckpointError`` naming the file, and ``--resume`` / ``eval --checkpoint`` turn both into one line."""

import builtins
import json
import os
import pickle
import random

import pytest
import safetensors.torch
import torch
import yaml

from visionssl.backbones import create_backbone
from visionssl.cli import main
from visionssl.engine import CheckpointError, Trainer, load_checkpoint, load_config, load_run_backbone

from conftest import TINY_BACKBONE_SOURCE, local_zoo_entry


class Payload:
    """Unpickling this calls ``fn(*args)``: with weights_only=False it would create the marker file."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker):
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.open": Payload(builtins.open, str(marker), "w"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) run directory with config.yaml and checkpoints/last.pt."""
    out, code = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("code") / "tiny_backbone.py"
    code.write_text(TINY_BACKBONE_SOURCE)
    cfg = load_config(
        "simclr",
        overrides=[
            "data.name=synthetic:32",
            "data.image_size=16",
            "augment.image_size=16",
            f"backbone.name={code}:tiny",
            "optim.batch_size=16",
            "method.proj_hidden_dim=16",
            "method.proj_dim=8",
            "train.epochs=1",
            "train.knn_every=-1",
            "train.progress=false",
            f"out={out}",
        ],
    )
    Trainer(cfg).fit()
    return out


def cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def one_line(err):
    return err.count("\n") == 1 and err.startswith("visionssl: error: ") and "Traceback" not in err


@pytest.mark.parametrize("fn", ["os.system", "builtins.open", "builtins.exec"])
@pytest.mark.parametrize("container", ["torch.save", "raw pickle", "inside a real checkpoint"])
def test_a_pickle_carrying_code_is_refused_and_the_code_never_runs(tmp_path, run_dir, fn, container):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[fn]
    path = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save({"method": {"w": torch.ones(1)}, "x": payload}, path)
    elif container == "raw pickle":
        path.write_bytes(pickle.dumps({"x": payload}, protocol=2))
    else:  # a genuine checkpoint with one extra, poisoned entry deep in its config
        ckpt = load_checkpoint(run_dir)
        ckpt["config"]["train"]["note"] = payload
        torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=rf"refusing to load {path}: .*could run code .*GLOBAL"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_run_backbone(path)
    assert not marker.exists()
    if fn == "builtins.open" and container == "torch.save":  # the payload is live: an unsafe load would run it
        torch.load(path, weights_only=False)
        assert marker.exists()


def test_the_cli_refuses_a_poisoned_checkpoint_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "visionssl", "x": payloads(marker)["os.system"]}, evil)
    code, err = cli(capsys, "eval", "knn", "--checkpoint", str(evil), "--data", "synthetic:8", "--no-baseline")
    assert code == 2 and err.count("\n") == 1 and f"refusing to load {evil}" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["first half", "last 10 bytes cut", "zero bytes", "random bytes", "a text file"])
def test_a_damaged_checkpoint_is_a_clear_error_naming_it(tmp_path, run_dir, damage):
    data = (run_dir / "checkpoints" / "last.pt").read_bytes()
    damaged = {
        "first half": data[: len(data) // 2],
        "last 10 bytes cut": data[:-10],
        "zero bytes": b"",
        "random bytes": random.Random(0).randbytes(4096),
        "a text file": b"epochs: 3\n",
    }[damage]
    path = tmp_path / "last.pt"
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_fuzzed_checkpoints_load_or_fail_with_checkpoint_error_only(tmp_path, run_dir):
    """60 damaged copies of a real checkpoint: bytes flipped, cut at random places, random garbage."""
    rng = random.Random(0)
    data = (run_dir / "checkpoints" / "last.pt").read_bytes()
    outcomes = {"loaded": 0, "CheckpointError": 0}
    for i in range(60):
        kind = i % 3
        if kind == 0:
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 1:
            damaged = data[: rng.randrange(len(data))]
        else:
            damaged = rng.randbytes(rng.randint(1, 2048))
        path = tmp_path / f"fuzz{i}.pt"
        path.write_bytes(bytes(damaged))
        try:
            load_checkpoint(path)
            outcomes["loaded"] += 1  # a flip inside tensor data changes numbers, not structure
        except CheckpointError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            outcomes["CheckpointError"] += 1
    assert outcomes["CheckpointError"] >= 40, outcomes


@pytest.mark.parametrize("damage", ["truncated", "poisoned", "another model"])
def test_resume_from_a_bad_checkpoint_gives_one_line_not_a_traceback(tmp_path, run_dir, capsys, damage):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(str(run_dir), str(out)))
    (out / "trusted_code.json").write_text(
        (run_dir / "trusted_code.json").read_text()
    )  # our own run: its code is trusted
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    ckpt_path = out / "checkpoints" / "last.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        ckpt_path.write_bytes(good[: len(good) * 2 // 3])
        expected = f"cannot read checkpoint {ckpt_path} (truncated or not a torch file)"
    elif damage == "poisoned":
        torch.save({"method": payloads(marker)["builtins.open"]}, ckpt_path)
        expected = f"refusing to load {ckpt_path}"
    else:
        ckpt = load_checkpoint(run_dir)
        ckpt["method"] = {k: v for k, v in ckpt["method"].items() if not k.startswith("projector")}
        torch.save(ckpt, ckpt_path)
        expected = f"cannot resume from {ckpt_path}: it does not match this run's method/backbone/optimizer"
    code, err = cli(capsys, "pretrain", "--out", str(out), "--resume")
    assert code == 2, err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


# ------------------------------------------------- a file's backbone arguments never load weights or URLs
@pytest.fixture
def watched(tmp_path, monkeypatch):
    """A bait weights file and a URL; ``touched`` lists every read of the bait and every fetch of a URL."""
    import urllib.request

    import timm.models._builder
    import torch.hub

    bait = tmp_path / "bait.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), bait)
    touched, real_load = [], torch.load

    def load(f, *args, **kwargs):
        if str(f) == str(bait):
            touched.append(f"read {f}")
        return real_load(f, *args, **kwargs)

    def fetch(*args, **kwargs):
        touched.append(f"fetched {args}")
        raise OSError("this test has no network")

    monkeypatch.setattr(torch, "load", load)
    for module, name in [
        (urllib.request, "urlopen"),
        (torch.hub, "load_state_dict_from_url"),
        (torch.hub, "download_url_to_file"),
        (timm.models._builder, "load_state_dict_from_url"),
    ]:
        monkeypatch.setattr(module, name, fetch)
    return bait, touched


def weight_kwargs(bait):
    """(the arguments a file gives, what the one-line refusal names) per case."""
    return {
        "checkpoint_path": ({"checkpoint_path": str(bait)}, "argument 'checkpoint_path' would load weights"),
        "pretrained_cfg_overlay": (
            {"pretrained_cfg_overlay": {"url": "http://127.0.0.1:9/w.pth"}, "pretrained": True},
            "argument 'pretrained",  # pretrained or pretrained_cfg_overlay, whichever the file lists first
        ),
        "a path as a value": ({"drop_rate": 0.0, "act_layer": str(bait)}, "argument 'act_layer' holds the path"),
    }


@pytest.mark.parametrize("case", ["checkpoint_path", "pretrained_cfg_overlay", "a path as a value"])
def test_weight_arguments_from_safetensors_metadata_are_refused_by_name(tmp_path, capsys, watched, case):
    bait, touched = watched
    kwargs, expected = weight_kwargs(bait)[case]
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(
        create_backbone("resnet18_cifar").state_dict(),
        path,
        metadata={"format": "visionssl", "backbone": "resnet18_cifar", "backbone_kwargs": json.dumps(kwargs)},
    )
    for command in (
        ["eval", "knn", "--checkpoint", str(path), "--data", "synthetic:8", "--image-size", "16", "--k", "3"],
        [
            "benchmark",
            "knn",
            "--checkpoint",
            "random",
            "--checkpoint",
            str(path),
            "--data",
            "synthetic:8",
            "--out",
            str(tmp_path / "b"),
            "--no-plots",
            "--no-progress",
        ],
    ):
        code, err = cli(capsys, *command)
        assert code == 2 and one_line(err) and str(path) in err and expected in err, (command, err)
    assert touched == []


@pytest.mark.parametrize("case", ["checkpoint_path", "pretrained_cfg_overlay"])
def test_weight_arguments_from_a_zoo_entry_are_refused_by_name(tmp_path, capsys, monkeypatch, watched, case):
    bait, touched = watched
    kwargs, expected = weight_kwargs(bait)[case]
    weights = tmp_path / "w.safetensors"
    safetensors.torch.save_file(create_backbone("resnet18_cifar").state_dict(), weights)
    entry = local_zoo_entry("shared", "resnet18_cifar", weights, backbone_kwargs=kwargs)
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({"models": [entry]}))  # a shared zoo file
    monkeypatch.setenv("VISIONSSL_ZOO", str(zoo_file))
    for command in (
        ["zoo", "convert", "shared", "--backbone", "resnet18", "--out", str(tmp_path / "o.safetensors")],
        ["zoo", "convert", "shared", "--out", str(tmp_path / "o.safetensors")],
        ["eval", "knn", "--checkpoint", "shared", "--data", "synthetic:8", "--image-size", "16", "--k", "3"],
    ):
        code, err = cli(capsys, *command)
        assert code == 2 and one_line(err) and "zoo entry 'shared'" in err and expected in err, (command, err)
    assert touched == [] and not (tmp_path / "o.safetensors").exists()


def test_weight_arguments_from_a_resumed_config_are_refused_by_name(tmp_path, capsys, watched):
    bait, touched = watched
    out = tmp_path / "run"
    code, err = cli(
        capsys,
        "pretrain",
        "--backbone",
        "resnet10t_cifar",
        "--data",
        "synthetic:32",
        "--image-size",
        "16",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(out),
        "method.proj_hidden_dim=16",
        "method.proj_dim=8",
        "train.knn_every=-1",
        "data.image_size=16",
    )
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["backbone"]["kwargs"] = {"checkpoint_path": str(bait)}  # a copied run, edited
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    code, err = cli(capsys, "pretrain", "--out", str(out), "--resume", "train.epochs=2")
    assert code == 2 and one_line(err) and "'checkpoint_path'" in err and "config.yaml" in err, err
    assert touched == []
    code, err = cli(
        capsys, "pretrain", "--out", str(out), "--resume", "train.epochs=2", "backbone.kwargs.checkpoint_path=null"
    )  # the user's own word overrides the file's
    assert code == 0, err


# ------------------------------------------------------------ bad architecture arguments end in one line
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ('{"in_chans": -1}', "in_chans=-1 is invalid; valid: an integer in [1, 64]"),
        ('{"norm_layer": "x"}', "'norm_layer' is not an architecture argument"),
        ('{"global_pool": "nope"}', "global_pool='nope' is invalid; valid: one of ''"),
        ('{"global_pool": "token"}', "rejected its arguments ['global_pool']"),
        ('{"drop_rate": NaN}', "drop_rate=nan is invalid; valid: a finite number in [0, 1)"),
        ('{"drop_rate": ' + DEEP + "}", "nested too deeply"),
        ('{"in_chans": [[[[[[[[[[[1]]]]]]]]]]]}', "nested more than 8 levels deep"),
        ('{"checkpoint_path": "/nonexistent"}', "'checkpoint_path' would load weights from elsewhere"),
    ],
    ids=[
        "in_chans -1",
        "norm_layer x",
        "global_pool nope",
        "global_pool token on a resnet",
        "drop_rate NaN",
        "deeply nested JSON",
        "nested lists",
        "checkpoint_path /nonexistent",
    ],
)
def test_bad_backbone_arguments_in_safetensors_metadata_end_in_one_line(tmp_path, capsys, kwargs, expected):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(
        create_backbone("resnet18_cifar").state_dict(),
        path,
        metadata={"format": "visionssl", "backbone": "resnet18_cifar", "backbone_kwargs": kwargs},
    )
    code, err = cli(capsys, "eval", "knn", "--checkpoint", str(path), "--data", "synthetic:8", "--image-size", "16")
    assert code == 2 and one_line(err) and expected in err and str(path) in err, err
    assert "internal error" not in err
