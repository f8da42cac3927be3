"""Fine-tuning with few labels: the labelled subset, the training, the epoch choice, the CLI and the benchmark."""

import json
import math

import pytest
import torch
from torch import nn

import visionssl as vs
from visionssl.cli import main
from visionssl.data import load_dataset
from visionssl.data.dataset import ImageDataset
from visionssl.errors import ConfigError, DataError
from visionssl.eval.finetune_subset import label_subset

from conftest import TinyNet

FAST = {"epochs": 2, "batch_size": 16, "progress": False, "device": "cpu"}


@vs.register_backbone("finetune_tiny", override=True)
def finetune_tiny(width: int = 4) -> nn.Module:
    return TinyNet(width=width)


@pytest.fixture(scope="module")
def splits():
    return load_dataset("synthetic:64", "train", 16), load_dataset("synthetic:32", "test", 16)


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_the_subset_is_class_balanced_seeded_and_nested():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    a, record = label_subset(labels, 0.1, seed=0, classes=["x", "y", "z"])
    b, again = label_subset(labels, 0.1, seed=0, classes=["x", "y", "z"])
    c, other = label_subset(labels, 0.1, seed=1, classes=["x", "y", "z"])
    assert labels[a].bincount().tolist() == [5, 3, 2] and record["per_class"] == {"x": 5, "y": 3, "z": 2}
    assert torch.equal(a, b) and record == again
    assert not torch.equal(a, c) and other["indices_sha256"] != record["indices_sha256"]
    assert labels[c].bincount().tolist() == [5, 3, 2]
    larger, _ = label_subset(labels, 0.5, seed=0)
    assert set(a.tolist()) <= set(larger.tolist())  # a smaller fraction's images are in the larger one's
    everything, _ = label_subset(labels, 1.0, seed=3)
    assert torch.equal(everything, torch.arange(100))


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, math.nan, math.inf, "abc"])
def test_a_fraction_outside_0_1_is_a_config_error(fraction, splits):
    with pytest.raises(ConfigError, match=r"fraction must be a number in \(0, 1\]"):
        vs.eval.finetune(TinyNet(), *splits, fraction=fraction, **FAST)


def test_a_fraction_that_leaves_a_class_without_labels_says_how_much_is_needed():
    labels = torch.tensor([0] * 400 + [1] * 25)
    with pytest.raises(ConfigError, match=r"class '1' \(25 training images\).*fraction >= 0\.02\b"):
        label_subset(labels, 0.01, seed=0)
    idx, _ = label_subset(labels, 0.02, seed=0)  # the fraction it names is enough
    assert labels[idx].bincount().tolist() == [8, 1]


def test_a_dataset_without_labels_is_a_data_error(splits):
    train, test = splits
    unlabelled = ImageDataset(train.images, {}, None, {}, "folder")
    with pytest.raises(DataError, match="needs labelled train and test sets; the train set 'folder' has no labels"):
        vs.eval.finetune(TinyNet(), unlabelled, test, **FAST)


def test_backbone_and_head_are_trained_and_the_subset_is_recorded(splits):
    backbone = TinyNet()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    out = vs.eval.finetune(backbone, *splits, fraction=0.5, seed=0, return_model=True, **FAST)
    tuned = out["model"]
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # the input is left alone
    assert not torch.equal(tuned[0][0].weight, before["0.weight"])  # first convolution
    assert tuned[1].weight.shape == (4, backbone.num_features) and tuned[1].weight.abs().max() > 0.011
    sub = out["subset"]
    assert sub["images"] == 32 and sub["per_class"] == {"freq0": 8, "freq1": 8, "freq2": 8, "freq3": 8}
    assert sub["train"] + sub["held_out"] == 32 and sub["held_out"] == 8  # 2 of every 8 held out
    again = vs.eval.finetune(TinyNet(), *splits, fraction=0.5, seed=0, **FAST)["subset"]
    assert again["indices_sha256"] == sub["indices_sha256"]  # another backbone, the same images


def test_the_epoch_is_chosen_without_the_test_labels(splits):
    train, test = splits
    broken = ImageDataset(test.images, {"class": (test.targets + 1) % 4}, "class", test.classes, "synthetic", "test")
    runs = []
    for test_set in (test, broken):
        torch.manual_seed(0)
        runs.append(vs.eval.finetune(TinyNet(), train, test_set, fraction=1.0, lr=0.1, **{**FAST, "epochs": 4}))
    assert runs[0]["best_epoch"] == runs[1]["best_epoch"]
    assert [h["val_top1"] for h in runs[0]["history"]] == [h["val_top1"] for h in runs[1]["history"]]
    assert runs[0]["top1"] != runs[1]["top1"]  # the labels did reach the score


def test_few_epochs_beat_chance_on_an_easy_task():
    train, test = load_dataset("synthetic:128", "train", 16), load_dataset("synthetic:64", "test", 16)
    out = vs.eval.finetune(TinyNet(width=8), train, test, fraction=1.0, lr=0.1, **{**FAST, "epochs": 6})
    assert out["top1"] > 50, out  # chance is 25%
    assert out["history"][-1]["train_loss"] < out["history"][0]["train_loss"]


def test_a_vit_gets_adamw_with_layer_decay(splits):
    vit = vs.create_backbone("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=2, num_heads=1, embed_dim=16)
    out = vs.eval.finetune(vit, *splits, fraction=0.25, **{**FAST, "epochs": 1})
    assert (out["optimizer"], out["layer_decay"], out["weight_decay"]) == ("adamw", 0.75, 0.05)


def _checkpoint(tmp_path):
    ckpt = {
        "format": "visionssl",
        "version": 1,
        "config": {
            "backbone": {"name": "finetune_tiny", "kwargs": {}},
            "data": {"name": "synthetic:48", "image_size": 16},
            "augment": {"image_size": 16},
        },
        "method": {f"backbone.{k}": v for k, v in finetune_tiny().state_dict().items()},
        "epoch": 1,
        "step": 1,
    }
    torch.save(ckpt, tmp_path / "last.pt")
    return str(tmp_path / "last.pt")


def test_eval_finetune_cli_prints_both_backbones_and_writes_the_record(tmp_path, capsys):
    ckpt, out = _checkpoint(tmp_path), tmp_path / "ft.json"
    argv = ["eval", "finetune", "--checkpoint", ckpt, "--fraction", "0.5", "--epochs", "1", "--device", "cpu"]
    code, stdout, err = run_cli([*argv, "--json", str(out)], capsys)
    assert code == 0, err
    assert "24 of 48 train labels (0.5: 20 trained, 4 held out" in stdout and "random weights (finetune_tiny)" in stdout
    results = json.loads(out.read_text())
    records = [r["subset"] for r in results.values()]
    assert len(records) == 2 and records[0] == records[1]


@pytest.mark.parametrize(
    "fraction, message",
    [
        ("0", "fraction must be a number in (0, 1] (e.g. 0.01, 0.1 or 1.0), got 0.0"),
        ("1.01", "fraction must be a number in (0, 1] (e.g. 0.01, 0.1 or 1.0), got 1.01"),
        ("nan", "fraction must be a number in (0, 1] (e.g. 0.01, 0.1 or 1.0), got nan"),
        ("0.01", "fraction 0.01 leaves class 'freq0' (12 training images) without a labelled image; every class "
         "needs at least one, which takes fraction >= 0.0417"),
    ],
)  # fmt: skip
def test_eval_finetune_cli_bad_fraction_is_one_line_exit_2(tmp_path, capsys, fraction, message):
    argv = ["eval", "finetune", "--checkpoint", _checkpoint(tmp_path), "--fraction", fraction, "--device", "cpu"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("visionssl: error: ") and message in err[0], err


def test_benchmark_finetune_compares_checkpoints_on_the_same_subsets(tmp_path, capsys):
    argv = ["benchmark", "finetune", "--checkpoint", _checkpoint(tmp_path), "--checkpoint", "random"]
    argv += ["--data", "synthetic:32", "--fraction", "0.5", "1", "--seeds", "0", "1", "--epochs", "1"]
    argv += ["--image-size", "16", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "bench")]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows = payload["rows"]
    assert [(r["checkpoint"], r["fraction"], r["seeds"]) for r in rows] == [
        (str(tmp_path / "last.pt"), 0.5, 2),
        (str(tmp_path / "last.pt"), 1.0, 2),
        ("random (finetune_tiny)", 0.5, 2),
        ("random (finetune_tiny)", 1.0, 2),
    ]
    hashes = [[run["subset"]["indices_sha256"] for run in r["runs"]] for r in rows]
    assert hashes[0] == hashes[2] and hashes[0][0] != hashes[0][1]  # same subset per seed, another per seed
    assert all(r["top1_std"] >= 0 for r in rows) and payload["environment"]["threads"] >= 1
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "| random (finetune_tiny) | synthetic:32 | 0.5 | 16 |" in table and " +- " in table


def test_the_docs_example_runs():
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
    section = doc.read_text(encoding="utf-8").split("## Fine-tuning with few labels\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    scope: dict = {}
    exec(compile(code, str(doc), "exec"), scope)
    assert scope["out"]["subset"]["per_class"] == {"freq0": 8, "freq1": 8, "freq2": 8, "freq3": 8}


def test_eval_finetune_cli_on_a_folder_without_labels_is_one_line_exit_2(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(folder / f"{i}.png")
    argv = ["eval", "finetune", "--checkpoint", _checkpoint(tmp_path), "--data", str(folder), "--device", "cpu"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and "has no class sub-folders" in err[0], err


def test_a_diverging_fine_tune_is_a_non_finite_loss_error(splits):
    from visionssl.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"fine-tuning loss became (nan|inf) in epoch 1 at lr 1e\+30"):
        vs.eval.finetune(TinyNet(), *splits, fraction=1.0, lr=1e30, **FAST)
