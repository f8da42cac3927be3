"""backbone.init (--init): a run's backbone starts from a zoo name, an export, a run or timm's cached weights."""

import hashlib
import json
import socket

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
import yaml

import visionssl as vs
from visionssl.cli import main
from visionssl.engine import Trainer, load_config
from visionssl.engine.smoke import smoke_overrides
from visionssl.errors import CheckpointError, ConfigError

from conftest import local_zoo_entry

TINY = smoke_overrides("data.name=synthetic:32", "backbone.name=resnet10t_cifar", "train.epochs=1")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONSSL_ZOO", raising=False)


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    return err.count("\n") == 1 and err.startswith("visionssl: error: ") and "Traceback" not in err


def config(*changes, method="simclr"):
    return load_config(method, overrides=[*TINY, *changes])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished tiny run and its export (``visionssl export``): ``(run, file)``."""
    root = tmp_path_factory.mktemp("source")
    run = root / "run"
    Trainer(config(f"out={run}", "train.seed=7")).fit()
    out = root / "source.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return run, out


def backbone_equals(module, state):
    own = module.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k].to(own[k].dtype)) for k in state)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_the_first_step_starts_from_the_exported_weights_and_the_heads_start_fresh(exported, tmp_path, method):
    run, file = exported
    weights = safetensors.torch.load_file(file)
    cfg = config(f"backbone.init={file}", f"out={tmp_path / 'new'}", method=method)
    trainer = Trainer(cfg)
    assert backbone_equals(trainer.method.backbone, weights)
    if method == "byol":  # the momentum target is a copy of the loaded backbone, not of a random one
        assert backbone_equals(trainer.method.target.backbone, weights)
    else:  # the projector is the method's own fresh one, not the source run's
        source_head = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]["projector.0.weight"]
        assert not torch.equal(trainer.method.projector[0].weight.detach(), source_head)
        fresh = Trainer(config(method=method)).method.projector[0].weight  # reading the file drew no random numbers
        assert torch.equal(trainer.method.projector[0].weight.detach(), fresh.detach())
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert cfg.backbone.init_sha256 == digest and trainer.init_record["kind"] == "export"
    trainer.fit()
    recorded = yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())["backbone"]
    assert recorded["init"] == str(file) and recorded["init_sha256"] == digest
    ckpt = torch.load(tmp_path / "new" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["backbone"]["init_sha256"] == digest


def test_the_record_is_in_tensorboard(exported, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, file = exported
    Trainer(config(f"backbone.init={file}", f"out={tmp_path / 'new'}")).fit()
    events = EventAccumulator(str(tmp_path / "new" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("backbone/init/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.replace("\n    ", "\n"))["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()


def test_a_run_directory_and_its_checkpoint_file_are_inits_too(exported):
    run, _ = exported
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]
    weights = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    for spec in (run, run / "checkpoints" / "last.pt"):
        trainer = Trainer(config(f"backbone.init={spec}"))
        assert backbone_equals(trainer.method.backbone, weights) and trainer.init_record["kind"] == "run"


def test_an_init_for_another_architecture_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    _, file = exported
    out = tmp_path / "other"
    tiny = [o for o in TINY if not o.startswith("backbone.name")]
    code, _, err = cli(capsys, "pretrain", "--backbone", "resnet18_cifar", "--init", file, "--out", out, *tiny)
    assert code == 2 and one_line(err), err
    assert "'resnet10t_cifar'" in err and "'resnet18_cifar'" in err and "missing keys" in err, err
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


def test_a_missing_init_names_it(tmp_path, capsys):
    code, _, err = cli(capsys, "pretrain", "--init", tmp_path / "nope.safetensors", "--out", tmp_path / "r", *TINY)
    assert code == 2 and one_line(err) and "nope.safetensors does not exist" in err, err


def test_resume_never_loads_the_init_again(exported, tmp_path, capsys, monkeypatch):
    _, source = exported
    file = tmp_path / "copy.safetensors"
    file.write_bytes(source.read_bytes())
    run = tmp_path / "run"
    assert cli(capsys, "pretrain", "--init", file, "--out", run, *TINY)[0] == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]
    file.unlink()  # gone, or changed: the run goes on from its own checkpoint either way

    def no_init(*args, **kwargs):
        raise AssertionError("backbone.init loaded on resume")

    monkeypatch.setattr(vs.zoo, "init_weights", no_init)
    monkeypatch.setattr(vs.engine.build, "_init_loaders", [no_init])
    code, _, err = cli(capsys, "pretrain", "--out", run, "--resume", "--epochs", "2", "--no-progress")
    assert code == 0, err
    cfg = load_config(config=str(run / "config.yaml"))
    assert cfg.backbone.init == str(file) and cfg.backbone.init_sha256  # the record is kept
    trainer = Trainer(cfg, resume=True)  # from Python: the checkpoint's weights, the init not read
    trainer.resume()
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert all(torch.equal(v, after[k]) for k, v in trainer.method.state_dict().items())
    assert not all(torch.equal(saved[k], after[k]) for k in saved if k.startswith("backbone."))  # it trained on
    code, _, err = cli(capsys, "pretrain", "--out", run, "--resume", "--init", source)
    assert code == 2 and one_line(err) and "--init" in err and "--resume" in err, err


def test_a_pinned_sha256_refuses_a_changed_file(exported, tmp_path):
    _, file = exported
    with pytest.raises(CheckpointError, match="pins backbone.init_sha256="):
        Trainer(config(f"backbone.init={file}", "backbone.init_sha256=" + "a" * 64))
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert Trainer(config(f"backbone.init={file}", f"backbone.init_sha256={digest}")).init_record["sha256"] == digest


def test_a_zoo_name_goes_through_the_resolver(exported, tmp_path, monkeypatch):
    _, file = exported
    entry = local_zoo_entry("team_rn10t", "resnet10t_cifar", file)
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({"models": [entry, {**entry, "name": "evil", "backbone": "x.py:fn"}]}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(zoo_file))
    trainer = Trainer(config("backbone.init=team_rn10t"))
    assert backbone_equals(trainer.method.backbone, safetensors.torch.load_file(file))
    assert trainer.init_record["kind"] == "zoo" and trainer.init_record["sha256"] == entry["sha256"]
    with pytest.raises(vs.errors.TrustError, match="zoo entry 'evil'"):  # the resolver's trust rules apply
        Trainer(config("backbone.init=evil"))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches, and no network."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path / "hf"


def test_timm_without_its_weights_in_the_cache_fails_in_one_line(offline, tmp_path, capsys):
    tiny = [o for o in TINY if not o.startswith("backbone.name")]
    code, _, err = cli(capsys, "pretrain", "--backbone", "resnet10t", "--init", "timm", "--out", tmp_path / "r", *tiny)
    assert code == 2 and one_line(err), err
    assert "timm/resnet10t.c3_in1k" in err and "huggingface-cli download timm/resnet10t.c3_in1k" in err, err


def test_timm_reads_its_cached_weights_without_the_classifier(offline):
    reference = timm.create_model("resnet10t", num_classes=1000)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    snapshot = offline / "models--timm--resnet10t.c3_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (offline / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (offline / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("abc123")
    safetensors.torch.save_file(state, snapshot / "model.safetensors")
    trainer = Trainer(config("backbone.name=resnet10t", "backbone.init=timm"))
    assert backbone_equals(trainer.method.backbone, {k: v for k, v in state.items() if not k.startswith("fc.")})
    assert trainer.init_record["source"] == "hf-hub:timm/resnet10t.c3_in1k"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (["backbone.init=timm"], "'resnet10t_cifar' is not a timm model"),
        (["backbone.init=''"], "backbone.init='' is empty"),
        (["backbone.init_sha256=abc"], "is not a sha256"),
        (["backbone.name=resnet10t", "backbone.init=timm", "backbone.kwargs.pretrained=true"], "both give"),
    ],
)
def test_bad_init_settings_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        config(*changes)


def test_an_init_with_a_method_given_is_refused(exported):
    _, file = exported
    with pytest.raises(ConfigError, match="load them into method.backbone yourself"):
        Trainer(config(f"backbone.init={file}"), method=vs.create_method("simclr", backbone="resnet10t_cifar"))


def test_the_python_example_of_docs_init_runs(capsys):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "init.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    exec(compile(code, "docs/init.md", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out.splitlines()[-1] == "True run"  # what the comment in the example says
