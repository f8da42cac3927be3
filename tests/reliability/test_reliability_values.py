"""Bad values give one line and exit code 2, early, naming the key and the valid range (issue 23); files are
written under the umask; VISIONSSL_HOME naming a file costs only the cache; a fuzz test over config overrides."""

import contextlib
import importlib
import importlib.util
import io
import os
import stat
import string

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import visionssl as vs
import visionssl.engine
from visionssl.cli import main
from visionssl.engine.checkpoint import atomic_save, atomic_write_text

ENGINE_MODULES = ("visionssl.engine.trainer", "visionssl.engine.build")


def refuse_in_engine(monkeypatch, name, refuse):
    """Replaces ``name`` (create_method, load_dataset) wherever the engine's modules look it up."""
    modules = [importlib.import_module(m) for m in ENGINE_MODULES if importlib.util.find_spec(m)]
    hits = [m for m in modules if hasattr(m, name)]
    assert hits, f"no engine module calls {name}"
    for module in hits:
        monkeypatch.setattr(module, name, refuse)


@pytest.fixture
def no_model(monkeypatch):
    """Building the model fails the test: every check below must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the bad value was reported")

    refuse_in_engine(monkeypatch, "create_method", refuse)


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
        (["--image-size", "100000"], "augment.image_size=100000 must be between 8 and 4096 pixels (--image-size)"),
        (["train.device=meta"], "train.device='meta' is not a device; valid: auto, cpu, cuda, cuda:N, mps"),
        (["--device", "meta"], "train.device='meta' is not a device"),  # was 'unsupported scalarType', exit 1
        (["optim.lr=1e300"], "optim.lr=1e+300 must be > 0 and <= 100"),  # was an overflow in the schedule, exit 1
        (["data.name=\udcff"], "data.name='\\udcff': not valid UTF-8 text"),  # was 'the key=value overrides'
        (["backbone.kwargs.x=" + "[" * 120 + "]" * 120], "nested more than 32 levels deep"),
    ],
)
def test_a_bad_value_is_one_line_exit_2_before_the_model_is_built(tmp_path, capsys, no_model, extra, message):
    code, err = run_cli(["pretrain", "--data", "synthetic:8", "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(
    "kwarg, message",
    [
        ("backbone.kwargs.no_such_argument=1", "rejected its arguments ['no_such_argument']"),  # by the model
        ("backbone.kwargs.drop_rate=abc", "drop_rate='abc' is invalid; valid: a finite number"),  # before it
    ],
)
def test_backbone_arguments_the_model_refuses_are_one_line_exit_2(tmp_path, capsys, kwarg, message):
    """Your own backbone.kwargs reach the model's constructor; a refusal there names them (was an internal error)."""
    args = ["pretrain", "--data", "synthetic:8", "--out", str(tmp_path / "run"), "optim.batch_size=4"]
    args += ["data.image_size=16", "augment.image_size=16", "backbone.name=resnet10t", kwarg]
    code, err = run_cli(args, capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_deeply_nested_config_file_is_one_line_exit_2(tmp_path, capsys, no_model):
    deep = tmp_path / "deep.yaml"
    deep.write_text("backbone:\n  kwargs:\n    x: " + "[" * 150 + "]" * 150 + "\n")  # was a RecursionError, exit 1
    code, err = run_cli(
        ["pretrain", "--config", str(deep), "--data", "synthetic:8", "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and len(err) == 1 and f"{deep}: lists or mappings nested more than 32 levels deep" in err[0], err


@vs.register_backbone("values_tiny", override=True)
def values_tiny(width: int = 4) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = width
    return net


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("data", 100000, "100000"),  # was a 640 GB allocation, exit 1
        ("data", float("nan"), "nan"),  # was a multi-line torch signature (linspace), exit 1
        ("data", True, "True"),
        ("data", "abc", "'abc'"),
        ("augment", 100000, "100000"),
        ("augment", [1, 2], "[1, 2]"),
    ],
)
def test_a_checkpoint_whose_config_has_a_bad_image_size_is_one_line_exit_2(tmp_path, capsys, key, value, shown):
    ckpt = {
        "format": "visionssl",
        "version": 1,
        "config": {
            "backbone": {"name": "values_tiny", "kwargs": {}},
            "data": {"name": "synthetic:16", "image_size": 16},
            "augment": {"image_size": 16},
        },
        "method": {f"backbone.{k}": v for k, v in values_tiny().state_dict().items()},
        "epoch": 1,
        "step": 1,
    }
    ckpt["config"][key]["image_size"] = value
    torch.save(ckpt, tmp_path / "last.pt")
    code, err = run_cli(["eval", "knn", "--checkpoint", str(tmp_path / "last.pt"), "--no-baseline", "--k", "3"], capsys)
    expected = f"{tmp_path / 'last.pt'}: config {key}.image_size={shown} must be a whole number between"
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_eval_image_size_and_device_are_bounded(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and one error line
        main(["eval", "knn", "--checkpoint", str(tmp_path), "--image-size", "100000"])
    assert exit_.value.code == 2 and "must be between 8 and 4096 pixels, got 100000" in capsys.readouterr().err
    code, err = run_cli(["eval", "knn", "--checkpoint", str(tmp_path), "--device", "meta"], capsys)
    assert code == 2 and len(err) == 1 and "--device='meta' is not a device" in err[0], err


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
class Resolved(BaseException):  # not an Exception: main() reports those as internal errors
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
    "optim.momentum",
    "optim.grad_clip",
    "optim.weight_decay",
    "train.epochs",
    "train.num_threads",
    "train.knn_k",
    "train.knn_temperature",
    "train.min_loss_scale",
    "train.precision",
    "train.device",
    "augment.image_size",
    "augment.name",
    "augment.kwargs",
    "data.image_size",
    "data.name",
    "data.workers",
    "backbone.name",
    "backbone.kwargs",
    "method.temperature",
    "method.proj_dim",
    "method.queue_size",
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
    "1e300",
    "-1e300",
    "100000",
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
    "${oc.env:HOME}",
    "${oc.decode:'[1, 2]'}",
    "${oc.create:{a: 1}}",
    "'",
    '"',
    ":",
    "=",
    "[0.9, 2]",
    "[0.9]",
    "synthetic:-5",
    "meta",
    "cuda:x",
    "mps",
    "[" * 120 + "]" * 120,
    "\x00",
    "\udcff",
    "é",
]
override = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.sampled_from(ODD)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(KEYS), st.text(string.printable, max_size=8)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(string.printable, max_size=12),  # junk, with or without "="
)


def assert_user_error_or_resolved(args):
    """``visionssl pretrain ARGS`` either resolves its config or is a user error: one line, exit 2 (an internal
    error, exit 1, fails)."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(visionssl.engine, "Trainer", stop_at_trainer)
        try:
            code = main(args)
        except Resolved:
            return
        except SystemExit as exc:  # argparse: its usage line and one error line, exit 2
            assert exc.code == 2 and "internal error" not in err.getvalue(), (args, err.getvalue())
            return
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert "internal error" not in err.getvalue(), (args, lines)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("visionssl: error: "), (args, lines)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(override, min_size=1, max_size=3), st.sampled_from(["simclr", "moco", "deepcluster"]))
def test_fuzzed_overrides_resolve_or_fail_in_one_line_with_exit_2(tmp_path_factory, overrides, method):
    out = str(tmp_path_factory.mktemp("run"))
    assert_user_error_or_resolved(["pretrain", "--method", method, "--out", out, "--", *overrides])


yaml_value = st.recursive(
    st.one_of(st.sampled_from(ODD), st.integers(), st.floats(), st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "x"]), inner, max_size=2)
    ),
    max_leaves=6,
)
config_file = st.one_of(
    st.dictionaries(  # a config of known and unknown sections and keys, with odd values
        st.sampled_from(["optim", "train", "data", "augment", "backbone", "method", "nosuch"]),
        st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]), yaml_value, max_size=3),
        max_size=3,
    ).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.sampled_from(ODD).map(lambda v: f"data:\n  name: {v}\n"),  # as written, unquoted
    st.text(string.printable, max_size=40),  # junk
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(config_file)
def test_fuzzed_config_files_resolve_or_fail_in_one_line_with_exit_2(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "c.yaml").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert_user_error_or_resolved(["pretrain", "--config", str(folder / "c.yaml"), "--out", str(folder / "run")])
