import subprocess
import sys

import pytest

from visionssl.cli import main
from visionssl.engine.config import ConfigError, load_config


def test_recipe_then_overrides():
    cfg = load_config("simclr", overrides=["train.epochs=3", "method.temperature=0.2", "optim.name=sgd"])
    assert (cfg.train.epochs, cfg.method.temperature, cfg.optim.name) == (3, 0.2, "sgd")
    assert cfg.method.proj_dim == 128  # from the recipe


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epoks=3", "did you mean 'train.epochs'"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=-0.1", "optim.lr=-0.1 must be > 0"),
        ("train.epochs=0", "train.epochs=0 must be >= 1"),
        ("method.temprature=0.1", "did you mean 'temperature'"),
        ("optim.name=adam", "choose one of sgd, lars, adamw"),
        ("method.name=simclrr", "did you mean simclr"),
        ("notakey", "not of the form key=value"),
    ],
)
def test_bad_config_values_get_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("simclr", overrides=[override])
    assert "\n" not in str(err.value)


def test_unknown_recipe_lists_choices():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config="missing.yaml")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "visionssl", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args,message",
    [
        (["pretrain", "--method", "simclrr", "--out", "x"], "unknown method 'simclrr'; did you mean simclr"),
        (["pretrain", "--epochs", "-3", "--out", "x"], "must be >= 1"),
        (["pretrain", "--data", "/no/such/folder/", "--out", "x"], "does not exist"),
        (["pretrain", "--backbone", "resnet18x", "--out", "x", "--data", "synthetic:8"], "unknown backbone"),
        (["eval", "knn", "--checkpoint", "/no/such/run"], "does not exist"),
    ],
)
def test_cli_wrong_values_give_one_line_not_a_traceback(args, message, tmp_path):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_lists_methods_backbones_and_help(capsys):
    assert main(["methods"]) == 0
    assert "simclr" in capsys.readouterr().out
    assert main(["backbones", "resnet18*"]) == 0
    out = capsys.readouterr().out
    assert "resnet18_cifar  (visionssl)" in out and "resnet18\n" in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    help_text = capsys.readouterr().out
    for option in (
        "--method",
        "--backbone",
        "--data",
        "--epochs",
        "--resume",
        "--skip-bad-images",
        "--device",
        "KEY=VALUE",
    ):
        assert option in help_text
