"""Bad values give one line and exit code 2, early, naming the key and the valid range (issue 23); files are
written under the umask; VISIONSSL_HOME naming a file costs only the cache; a fuzz test over config overrides."""

import contextlib
import io
import os
import stat
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import visionssl.engine
from visionssl.cli import main
from visionssl.engine import trainer as trainer_module
from visionssl.engine.checkpoint import atomic_save, atomic_write_text


@pytest.fixture
def no_model(monkeypatch):
    """Building the model fails the test: every check below must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the bad value was reported")

    monkeypatch.setattr(trainer_module, "create_method", refuse)


def run_cli(args, capsys):
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["optim.warmup_epochs=inf"],
            "optim.warmup_epochs=inf must be a finite number",
        ),  # was an OverflowError traceback
        (["optim.lr=inf"], "optim.lr=inf must be a finite number"),  # was accepted (NaN loss at step 2)
        (["optim.lr=nan"], "optim.lr=nan must be a finite number"),
        (["optim.trust_coefficient=-1"], "optim.trust_coefficient=-1.0 must be > 0"),  # was accepted
        (["method.temperature=0"], "method.temperature=0 must be > 0 (simclr)"),  # was caught after the model, unnamed
        (["method.proj_dim=0"], "method.proj_dim=0 must be >= 1 (simclr)"),
        (["--method", "moco", "method.momentum=1.5"], "method.momentum=1.5 must be >= 0 and <= 1 (moco)"),
        (["--threads", "100000"], "train.num_threads=100000 must be between 1 and"),  # was a segmentation fault
        (
            ["--data", "synthetic:-5"],
            "'synthetic:-5': N must be a whole number of images >= 1",
        ),  # was a RuntimeError traceback
    ],
)
def test_a_bad_value_is_one_line_exit_2_before_the_model_is_built(tmp_path, capsys, no_model, extra, message):
    code, err = run_cli(["pretrain", "--data", "synthetic:8", "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_method_declares_its_own_ranges_before_the_general_ones():
    from visionssl.engine import load_config

    load_config("deepcluster", overrides=["method.proj_dim=0"])  # 0: no projection head (its own range)
    with pytest.raises(visionssl.engine.ConfigError, match=r"method.proj_dim=-1 must be >= 0 \(deepcluster\)"):
        load_config("deepcluster", overrides=["method.proj_dim=-1"])


def test_visionssl_home_naming_a_file_warns_and_goes_on_uncached(tmp_path, monkeypatch):
    from visionssl.data import load_dataset

    (tmp_path / "home").write_text("not a directory")
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONSSL_NO_CACHE", raising=False)
    (tmp_path / "f" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (10, 10)).save(tmp_path / "f" / "a" / f"{i}.png")
    with pytest.warns(UserWarning, match="could not write the dataset cache .*going on without it"):
        ds = load_dataset(str(tmp_path / "f"), "all", 8)  # was NotADirectoryError, the run aborted
    assert len(ds) == 3


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_and_configs_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ckpt = atomic_save({"w": torch.ones(1)}, tmp_path / "last.pt")
        config = atomic_write_text("a: 1\n", tmp_path / "config.yaml")
    finally:
        os.umask(old)
    for path in (ckpt, config):  # was 0600 (mkstemp's mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_zoo_convert_of_random_bytes_is_one_line(tmp_path, capsys):
    (tmp_path / "rand.pt").write_bytes(os.urandom(3000))
    code, err = run_cli(
        [
            "zoo",
            "convert",
            str(tmp_path / "rand.pt"),
            "--format",
            "moco",
            "--backbone",
            "resnet18",
            "--out",
            str(tmp_path / "o.safetensors"),
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and "(truncated, damaged, or not a torch file)" in err[0]
    assert "could run code" not in err[0] and not (tmp_path / "o.safetensors").exists()


def test_zoo_convert_suggests_a_loader_that_knows_the_backbone(tmp_path, capsys):
    import visionssl as vs

    net = vs.create_backbone("resnet18_cifar")
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "m.pt")
    out = tmp_path / "c.safetensors"
    assert (
        main(
            [
                "zoo",
                "convert",
                str(tmp_path / "m.pt"),
                "--format",
                "moco",
                "--backbone",
                "resnet18_cifar",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    hint = capsys.readouterr().out.split("load with: ")[1].strip()
    assert "timm.create_model('resnet18_cifar'" not in hint  # timm does not know resnet18_cifar
    import safetensors.torch

    scope = {"vs": vs, "safetensors": safetensors}
    exec(hint.replace("  # or: ", "\n"), scope)  # both suggested lines run
    assert torch.equal(scope["net"].conv1.weight, net.conv1.weight)


# ------------------------------------------------------------------------------------ fuzz
class Resolved(Exception):
    """The config was resolved and validated: the run would start here."""


def stop_at_trainer(cfg, *args, **kwargs):
    raise Resolved


KEYS = [
    "optim.lr",
    "optim.warmup_epochs",
    "optim.trust_coefficient",
    "optim.betas",
    "optim.batch_size",
    "optim.name",
    "train.epochs",
    "train.num_threads",
    "train.knn_k",
    "train.precision",
    "train.device",
    "augment.image_size",
    "data.image_size",
    "data.name",
    "backbone.name",
    "backbone.kwargs",
    "method.temperature",
    "method.proj_dim",
    "method.name",
    "out",
    "optim",
    "train",
    "nosuch.key",
    "method.nosuch",
    "optim.lr.x",
]
ODD = [
    "inf",
    "-inf",
    "nan",
    "-1",
    "0",
    "1",
    "0.5",
    "1e309",
    "-0.0",
    "99999999999999999999",
    "[]",
    "{}",
    "null",
    "true",
    "abc",
    "",
    "[1,",
    "{a: 1}",
    "${optim.lr}",
    "${nosuch}",
    "'",
    '"',
    ":",
    "=",
    "[0.9, 2]",
    "synthetic:-5",
    "\x00",
    "é",
]
override = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.sampled_from(ODD)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(KEYS), st.text(string.printable, max_size=8)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(string.printable, max_size=12),  # junk, with or without "="
)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(override, min_size=1, max_size=3), st.sampled_from(["simclr", "moco", "deepcluster"]))
def test_fuzzed_overrides_resolve_or_fail_in_one_line_with_exit_2(tmp_path_factory, overrides, method):
    out = str(tmp_path_factory.mktemp("run"))
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(visionssl.engine, "Trainer", stop_at_trainer)
        try:
            code = main(["pretrain", "--method", method, "--out", out, "--", *overrides])
        except Resolved:
            return
        except SystemExit as exc:  # argparse: its usage line and one error line, exit 2
            assert exc.code == 2
            return
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("visionssl: error: "), (overrides, lines)
