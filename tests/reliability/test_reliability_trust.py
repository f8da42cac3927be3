"""Issue 23: a checkpoint, a safetensors file or a zoo entry never runs code; malformed checkpoints end in one line.

Every attack is first shown to be live (the payload really creates the marker when called), then refused:
the marker never appears, the error is one line, the CLI exits with 2. Your own runs keep loading.
"""

import contextlib
import io
import json
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import visionssl as vs
from visionssl.backbones.trust import UntrustedCodeError, check_backbone_spec, record_trust, run_trusts
from visionssl.cli import main
from visionssl.engine import CheckpointError, load_run_backbone

from conftest import local_zoo_entry

EVAL = ["--data", "synthetic:16", "--image-size", "16", "--k", "3", "--batch-size", "16"]
TINY_RUN = [
    "--data",
    "synthetic:32",
    "--image-size",
    "16",
    "--batch-size",
    "16",
    "--no-progress",
    "data.image_size=16",
    "method.proj_hidden_dim=16",
    "method.proj_dim=8",
    "train.knn_every=-1",
]


@vs.register_backbone("trust_tiny", override=True)
def trust_tiny(width: int = 4, in_chans: int = 3) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(in_chans, width, 3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    net.num_features = width
    return net


CODE_BACKBONE = """
import pathlib
from torch import nn
pathlib.Path({marker!r}).touch()  # importing this file is running it


def {fn}(width=4, **kw):
    net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = width
    return net
"""


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))  # the trust key lives here
    monkeypatch.delenv("VISIONSSL_ZOO", raising=False)
    monkeypatch.setenv("VISIONSSL_OFFLINE", "1")


def checkpoint(name="trust_tiny", kwargs=None, state=None):
    state = state if state is not None else trust_tiny().state_dict()
    return {
        "format": "visionssl",
        "version": 1,
        "config": {
            "backbone": {"name": name, "kwargs": kwargs or {}},
            "data": {"name": "synthetic:16"},
            "augment": {"image_size": 16},
        },
        "method": {f"backbone.{k}": v for k, v in state.items()},
        "epoch": 1,
        "step": 1,
    }


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    return err.count("\n") == 1 and err.startswith("visionssl: error: ") and "Traceback" not in err


def code_file(tmp_path, marker, fn="build"):
    path = tmp_path / "evil_backbone.py"
    path.write_text(CODE_BACKBONE.format(marker=str(marker), fn=fn))
    return path


# ------------------------------------------------------------------------------------------ the three carriers
def payloads(tmp_path, marker):
    return {
        "subprocess:run": ("subprocess:run", {"args": ["touch", str(marker)]}),
        "file.py:fn": (f"{code_file(tmp_path, marker)}:build", {}),
    }


def test_the_payloads_are_live(tmp_path):
    marker = tmp_path / "pwned"
    subprocess.run(["touch", str(marker)], check=True)  # what subprocess:run with those arguments does
    assert marker.exists()
    marker.unlink()
    vs.create_backbone(*payloads(tmp_path, marker)["file.py:fn"][:1])  # the user's own call imports the file
    assert marker.exists()


@pytest.mark.parametrize("payload", ["subprocess:run", "file.py:fn"])
def test_a_checkpoint_config_naming_code_is_refused(tmp_path, capsys, payload):
    marker = tmp_path / "pwned"
    name, kwargs = payloads(tmp_path, marker)[payload]
    evil = tmp_path / "evil.pt"
    torch.save(checkpoint(name, kwargs), evil)
    with pytest.raises(CheckpointError, match=r"names the backbone .* is code .* --trust-code") as err:
        load_run_backbone(evil)
    assert "\n" not in str(err.value) and name in str(err.value)
    for command in (
        ["eval", "knn", "--checkpoint", evil, *EVAL],
        ["eval", "linear", "--checkpoint", evil, *EVAL[:4]],
        ["export", evil, "--out", tmp_path / "x.safetensors"],
        [
            "benchmark",
            "knn",
            "--checkpoint",
            "random",
            "--checkpoint",
            evil,
            "--data",
            "synthetic:16",
            "--out",
            tmp_path / "bench",
            "--no-plots",
            "--no-progress",
        ],
    ):
        code, _, err = cli(capsys, *command)
        assert code == 2 and one_line(err) and name in err, (command, err)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["subprocess:run", "file.py:fn"])
def test_safetensors_metadata_naming_code_is_refused(tmp_path, capsys, payload):
    marker = tmp_path / "pwned"
    name, kwargs = payloads(tmp_path, marker)[payload]
    evil = tmp_path / "evil.safetensors"
    safetensors.torch.save_file(
        trust_tiny().state_dict(),
        evil,
        metadata={"format": "visionssl", "backbone": name, "backbone_kwargs": json.dumps(kwargs)},
    )
    with pytest.raises(UntrustedCodeError, match="metadata"):
        vs.zoo.load_backbone(evil)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", evil, *EVAL)
    assert code == 2 and one_line(err) and f"names the backbone {name!r}" in err
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["subprocess:run", "file.py:fn"])
def test_a_zoo_entry_naming_code_is_refused(tmp_path, capsys, monkeypatch, payload):
    marker = tmp_path / "pwned"
    name, kwargs = payloads(tmp_path, marker)[payload]
    weights = tmp_path / "w.safetensors"
    safetensors.torch.save_file(trust_tiny().state_dict(), weights, metadata={"backbone": "trust_tiny"})
    entry = local_zoo_entry("evil", name, weights, backbone_kwargs=kwargs)
    zoo_file = tmp_path / "shared_zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({"models": [entry]}))
    monkeypatch.setenv("VISIONSSL_ZOO", str(zoo_file))
    with pytest.raises(UntrustedCodeError, match="zoo entry 'evil'"):
        vs.zoo.load("evil")
    for command in (
        ["eval", "knn", "--checkpoint", "evil", *EVAL],
        ["zoo", "convert", "evil", "--out", tmp_path / "o.safetensors"],
    ):
        code, _, err = cli(capsys, *command)
        assert code == 2 and one_line(err) and name in err, (command, err)
    assert not marker.exists()
    if payload == "file.py:fn":  # opting in runs it: the refusal above was the trust model, not a broken entry
        assert vs.zoo.load("evil", trust_code=True).num_features == 4 and marker.exists()


def test_trust_code_allows_a_file_named_by_a_checkpoint(tmp_path, capsys):
    marker = tmp_path / "ran"
    name = f"{code_file(tmp_path, marker)}:build"
    path = tmp_path / "theirs.pt"
    torch.save(checkpoint(name, {"width": 4}), path)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path, *EVAL)
    assert code == 2 and one_line(err) and not marker.exists()
    code, out, err = cli(capsys, "eval", "knn", "--checkpoint", path, *EVAL, "--trust-code")
    assert code == 0, err
    assert marker.exists() and f"random weights ({name})" in out


def test_keyword_arguments_from_a_file_are_data_checked_against_the_signature(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"trust_tiny' has no argument\(s\) evil; valid: width, in_chans"):
        check_backbone_spec("trust_tiny", {"evil": 1}, source="f.pt")
    with pytest.raises(ValueError, match="would load weights from elsewhere"):
        check_backbone_spec("resnet18", {"pretrained_cfg_overlay": {"url": "http://x"}}, source="f.pt")
    with pytest.raises(ValueError, match="'act' must be plain data"):
        check_backbone_spec("resnet18", {"act": torch.ones(1)}, source="f.pt")
    assert check_backbone_spec("resnet18", {"in_chans": 1, "drop_rate": 0.1}, source="f.pt")[1]["in_chans"] == 1
    path = tmp_path / "k.pt"
    torch.save(checkpoint("trust_tiny", {"width": 4, "callback": "os:system"}), path)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path, *EVAL)
    assert code == 2 and one_line(err) and "has no argument(s) callback; valid: width, in_chans" in err


# --------------------------------------------------------------------------- your own run keeps working
def test_your_own_code_backbone_run_resumes_and_loads_but_a_moved_or_exported_file_does_not(tmp_path, capsys):
    marker = tmp_path / "imported"
    spec = f"{code_file(tmp_path, marker, fn='tiny_convnet')}:tiny_convnet"
    run = tmp_path / "run"
    code, _, err = cli(capsys, "pretrain", "--backbone", spec, "--epochs", "1", "--out", run, *TINY_RUN)
    assert code == 0, err
    assert (run / "trusted_code.json").is_file()
    code, _, err = cli(capsys, "pretrain", "--out", run, "--resume", "train.epochs=2")
    assert code == 0, err
    assert vs.zoo.load_backbone(run).num_features == 4
    code, out, err = cli(capsys, "eval", "knn", "--checkpoint", run, *EVAL)
    assert code == 0 and f"random weights ({spec})" in out, err
    assert vs.zoo.export_run(run).path.is_file()

    moved = tmp_path / "moved.pt"
    shutil.copy(run / "checkpoints" / "last.pt", moved)
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        vs.zoo.load_backbone(moved)
    assert vs.zoo.load_backbone(moved, trust_code=True).num_features == 4
    exported = run / "export" / "run.safetensors"
    with pytest.raises(UntrustedCodeError):
        vs.zoo.load_backbone(exported)
    assert vs.zoo.load_backbone(exported, trust_code=True).num_features == 4

    forged = tmp_path / "forged"  # their run directory, record and all, signed with another machine's key
    shutil.copytree(run, forged)
    (forged / "trusted_code.json").write_text(json.dumps({"backbone": spec, "signature": "0" * 64}))
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        vs.zoo.load_backbone(forged)
    code, _, err = cli(capsys, "pretrain", "--out", forged, "--resume", "train.epochs=3")
    assert code == 2 and one_line(err) and "--trust-code" in err


def test_a_config_file_naming_code_needs_the_users_word(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "downloaded.yaml"
    config.write_text(yaml.safe_dump({"method": {"name": "simclr"}, "backbone": {"name": "subprocess:run"}}))
    code, _, err = cli(capsys, "pretrain", "--config", config, "--out", tmp_path / "r", *TINY_RUN)
    assert code == 2 and one_line(err) and "'subprocess:run'" in err and not (tmp_path / "r").exists()
    assert not marker.exists()


# --------------------------------------------------------------------------------- malformed checkpoints
def malformed(tmp_path):
    good = checkpoint()
    random_bytes = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=random_bytes, dtype=torch.uint8).tolist())
    st_file = tmp_path / "good.safetensors"
    safetensors.torch.save_file(trust_tiny().state_dict(), st_file, metadata={"backbone": "trust_tiny"})
    data = st_file.read_bytes()
    return {
        "bare tensor.pt": torch.ones(3),
        "list.pt": [1, 2, 3],
        "partial dict.pt": {"format": "visionssl", "config": {"backbone": {"name": "trust_tiny"}}},
        "non-tensor values.pt": {**good, "method": {k: v.tolist() for k, v in good["method"].items()}},
        "config not a dict.pt": {**good, "config": [1]},
        "wrong shapes.pt": {**good, "method": {k: torch.zeros(2) for k in good["method"]}},
        "truncated.safetensors": data[: len(data) // 2],
        "random.safetensors": noise,
        "random bytes.pt": noise,
        "empty.pt": b"",
    }


def test_malformed_checkpoints_end_in_one_line(tmp_path, capsys):
    for name, content in malformed(tmp_path).items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path, *EVAL)
        assert code == 2 and one_line(err) and str(path) in err, (name, err)


def test_the_random_baseline_of_a_safetensors_file_is_its_own_architecture(tmp_path, capsys):
    path = tmp_path / "r18c.safetensors"
    safetensors.torch.save_file(
        vs.create_backbone("resnet18_cifar").state_dict(),
        path,
        metadata={"format": "visionssl", "backbone": "resnet18_cifar", "backbone_kwargs": "{}"},
    )
    code, out, err = cli(
        capsys, "eval", "knn", "--checkpoint", path, "--data", "synthetic:8", "--image-size", "16", "--k", "3"
    )
    assert code == 0, err
    assert "random weights (resnet18_cifar)" in out and "random weights (resnet18)" not in out


# -------------------------------------------------------------------------------------------------- fuzz
GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.just(torch.ones(2)),
    st.just("subprocess:run"),
    st.just("resnet18"),
)


@st.composite
def mutated_checkpoints(draw):
    ck = checkpoint()
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "config", "backbone", "kwargs", "method"]))
        if where == "top":
            key = draw(st.sampled_from(["format", "config", "method", "epoch"]))
            if draw(st.booleans()):
                ck.pop(key, None)
            else:
                ck[key] = draw(GARBAGE)
        elif where == "config" and isinstance(ck.get("config"), dict):
            ck["config"][draw(st.sampled_from(["backbone", "data", "augment"]))] = draw(GARBAGE)
        elif (
            where == "backbone"
            and isinstance(ck.get("config"), dict)
            and isinstance(ck["config"].get("backbone"), dict)
        ):
            ck["config"]["backbone"][draw(st.sampled_from(["name", "kwargs"]))] = draw(GARBAGE)
        elif (
            where == "kwargs" and isinstance(ck.get("config"), dict) and isinstance(ck["config"].get("backbone"), dict)
        ):
            ck["config"]["backbone"]["kwargs"] = {draw(st.sampled_from(["width", "in_chans", "x"])): draw(GARBAGE)}
        elif where == "method" and isinstance(ck.get("method"), dict) and ck["method"]:
            key = draw(st.sampled_from(sorted(ck["method"])))
            ck["method"][key] = draw(st.one_of(GARBAGE, st.just(torch.zeros(3, 1)), st.none()))
    return ck


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    content=st.one_of(mutated_checkpoints(), mutated_checkpoints(), mutated_checkpoints(), st.binary(max_size=512)),
    truncate=st.integers(0, 100),
)
def test_fuzzed_checkpoint_contents_succeed_or_fail_in_one_line(tmp_path_factory, content, truncate):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "ck.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
        if truncate < 10:  # cut the file short now and then
            path.write_bytes(path.read_bytes()[: path.stat().st_size * truncate // 10])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["eval", "knn", "--checkpoint", str(path), *EVAL, "--no-baseline"])
    assert code in (0, 2), err.getvalue()
    if code == 2:
        assert one_line(err.getvalue()), err.getvalue()
    assert not (folder / "pwned").exists()


# ------------------------------------------------------ a trust record vouches for the code, not for a name
COUNTING_BACKBONE = """
from torch import nn

with open({marker!r}, "a") as f:  # importing this file is running it: one line per import
    f.write("imported\\n")


def build(width=4, **kw):
    net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = width
    return net
"""


def write_module(folder, module, marker):
    """``module`` (``net`` or ``pkg.net``) under ``folder``; importing it (or its package) appends to ``marker``."""
    *packages, leaf = module.split(".")
    where = folder
    for package in packages:
        where = where / package
        where.mkdir(parents=True, exist_ok=True)
        (where / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('package\\n')\n")
    folder.mkdir(parents=True, exist_ok=True)
    (where / f"{leaf}.py").write_text(COUNTING_BACKBONE.format(marker=str(marker)))


@pytest.fixture
def fresh_imports(monkeypatch):
    """Each later CLI call is as a new process: sys.path and sys.modules are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def forget(module, tmp_path):
    """As a new process would: ``module`` and its package not imported, no folder of this test on the path."""
    for name in [m for m in sys.modules if m.split(".")[0] == module.split(".")[0]]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not p.startswith(str(tmp_path))]


@pytest.mark.parametrize("module", ["replay_net", "replay_pkg.net"])
def test_a_replayed_trust_record_does_not_import_another_module_of_the_same_name(
    tmp_path, capsys, monkeypatch, fresh_imports, module
):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write_module(ours, module, tmp_path / "ours_ran")
    write_module(theirs, module, tmp_path / "theirs_ran")  # same name, other code
    monkeypatch.chdir(ours)
    code, _, err = cli(capsys, "pretrain", "--backbone", f"{module}:build", "--epochs", "1", "--out", "run", *TINY_RUN)
    assert code == 0, err
    record = json.loads((ours / "run" / "trusted_code.json").read_text())
    assert record["files"][-1]["file"] == str((ours / (module.replace(".", "/") + ".py")).resolve())
    assert record["kwargs"] == {} and record["run"] and record["files"][-1]["sha256"]

    shutil.copytree(ours / "run", theirs / "run")  # the run and its record, replayed where other code lives
    forget(module, tmp_path)
    monkeypatch.chdir(theirs)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", "run", *EVAL)
    assert code == 2 and one_line(err), err
    assert f"the code that `{module}:build` names has changed since this run vouched for it" in err
    assert "pass --trust-code to load it anyway" in err and str(theirs) in err and str(ours) in err
    assert not (tmp_path / "theirs_ran").exists() and module not in sys.modules  # nothing of theirs was imported
    for command in (["export", "run", "--out", tmp_path / "x.safetensors"], ["pretrain", "--out", "run", "--resume"]):
        code, _, err = cli(capsys, *command)
        assert code == 2 and one_line(err) and "has changed since this run vouched for it" in err, (command, err)
    assert not (tmp_path / "theirs_ran").exists()

    # the same code, moved: the run and the very same files elsewhere still load, from where they are now
    moved = tmp_path / "moved"
    shutil.copytree(ours, moved)
    shutil.rmtree(ours)
    forget(module, tmp_path)
    monkeypatch.chdir(moved)
    imports = (tmp_path / "ours_ran").read_text().count("\n")
    code, out, err = cli(capsys, "eval", "knn", "--checkpoint", "run", *EVAL)
    assert code == 0, err
    assert f"random weights ({module}:build)" in out  # the baseline reuses the module imported once
    assert (tmp_path / "ours_ran").read_text().count("\n") == imports + len(module.split("."))
    assert sys.modules[module].__file__ == str(moved / (module.replace(".", "/") + ".py"))


def test_a_trust_record_vouches_for_its_arguments_in_its_own_format_only(tmp_path, capsys, fresh_imports):
    marker = tmp_path / "ran"
    spec = f"{code_file(tmp_path, marker)}:build"
    run = tmp_path / "run"
    code, _, err = cli(capsys, "pretrain", "--backbone", spec, "--epochs", "1", "--out", run, *TINY_RUN)
    assert code == 0, err
    record = json.loads((run / "trusted_code.json").read_text())
    marker.unlink()

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["config"]["backbone"]["kwargs"] = {"width": 8}  # the record vouched for width 4
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", run, *EVAL)
    assert code == 2 and one_line(err) and 'with the arguments {}, not {"width":8}' in err, err

    old = {"backbone": spec, "signature": record["signature"]}  # an older visionssl: the name and a signature
    (run / "trusted_code.json").write_text(json.dumps(old))
    ckpt["config"]["backbone"]["kwargs"] = {}
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", run, *EVAL)
    assert code == 2 and one_line(err) and "vouches for the name" in err and "re-run with --trust-code" in err

    tampered = {**record, "files": [{**record["files"][0], "sha256": "0" * 64}]}  # edited without the key
    (run / "trusted_code.json").write_text(json.dumps(tampered))
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", run, *EVAL)
    assert code == 2 and one_line(err) and "not signed on this machine" in err
    assert not marker.exists()


def test_the_trust_record_replaces_a_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "trusted_code.json").symlink_to(victim)
    record_trust(run, "json:dumps", {})
    assert victim.read_text() == "precious\n"
    assert not (run / "trusted_code.json").is_symlink() and run_trusts(run, "json:dumps", {})
