"""The helpers of benchmarks/methods_elpv.py behind the README's methods table: folds, 4-fold kNN, seed summary."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import visionssl as vs
from visionssl.data.dataset import ImageDataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "methods_elpv.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("methods_elpv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for name, loaded in list(sys.modules.items()):  # its helpers (_common, _elpv_report): fresh for the next file
        if Path(getattr(loaded, "__file__", None) or "/").parent == SCRIPT.parent:
            sys.modules.pop(name)


def test_stratified_folds_deal_every_stratum_evenly(bench):
    strata = np.array([0] * 10 + [1] * 7 + [2] * 3)
    folds = bench.stratified_folds(strata, 4, seed=1)
    assert folds.shape == (20,) and set(folds) == {0, 1, 2, 3}
    for s in range(3):
        counts = np.bincount(folds[strata == s], minlength=4)
        assert counts.max() - counts.min() <= 1  # round-robin: no fold gets two more of a stratum
    assert np.array_equal(folds, bench.stratified_folds(strata, 4, seed=1))  # seeded
    assert not np.array_equal(folds, bench.stratified_folds(strata, 4, seed=2))


def test_cross_validated_knn_scores_each_fold_against_the_others(bench):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 2
    images = (labels.view(-1, 1, 1, 1) * 150 + torch.randint(0, 100, (24, 1, 8, 8), generator=g)).to(torch.uint8)
    data = ImageDataset(images, {"c": labels}, "c", {"c": ["dark", "bright"]}, "toy")
    backbone = vs.create_backbone("resnet10t_cifar")
    folds = bench.stratified_folds(labels.numpy(), 4)
    x, y = vs.eval.extract_features(backbone, data, progress=False)
    right = 0
    for f in range(4):
        q = torch.from_numpy(folds == f)
        right += vs.eval.knn(x[~q], y[~q], x[q], y[q], k=3, temperature=0.07)["top1"] / 100 * int(q.sum())
    assert bench.cross_validated_knn(x, y, folds, 3) == pytest.approx(100 * right / 24)


def test_summarize_seeds_gathers_each_seeds_gain(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path)
    for seed, rows in ((0, [("rot", -1.0, 0.5), ("dc", 1.0, None)]), (1, [("rot", 2.0, 1.5)])):
        name = "methods_elpv" if seed == 0 else f"methods_elpv_seed{seed}"
        results = [
            {"method": m, "gain_over_random": t, **({"train_4fold_gain": f} if f is not None else {})}
            for m, t, f in rows
        ]
        (tmp_path / f"{name}.json").write_text(json.dumps({"budget": {"seed": seed}, "results": results}))
    bench.summarize_seeds()
    summary = json.loads((tmp_path / "methods_elpv_seeds.json").read_text())["methods"]
    assert summary["rot"]["mean_test_gain"] == pytest.approx(0.5) and summary["rot"][
        "mean_train_4fold_gain"
    ] == pytest.approx(1.0)
    assert summary["dc"]["mean_test_gain"] == pytest.approx(1.0) and summary["dc"]["mean_train_4fold_gain"] is None
    table = (tmp_path / "methods_elpv_seeds.md").read_text()
    assert "| rot | -1.00 / +0.50 | +2.00 / +1.50 | +0.50 +- 2.12 | +1.00 +- 0.71 | 2 |" in table
    assert summary["rot"]["std_test_gain"] == pytest.approx(2.1213, abs=1e-4)  # the sample std over seeds
    assert "| dc | +1.00 / - |  | +1.00 | - | 1 |" in table


def test_save_writes_the_table_and_names_extra_overrides(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path)
    row = {
        "method": "context",
        "knn_top1": 76.3,
        "gain_over_random": -2.29,
        "train_4fold_top1": 77.41,
        "train_4fold_gain": -0.05,
        "train_seconds": 871.0,
        "precision": "fp32",
        "epochs_done": 12,
        "set": ["augment.image_size=266", "data.image_size=300"],
        "device": "cpu",
        "torch": "2",
    }
    budget = {"backbone": "resnet18", "image_size": 64, "batch_size": 32, "epochs": 12, "k": 20, "seed": 0}
    spread = {"seeds": [78.59, 77.0], "mean": 77.795, "std": 0.795, "cross_validated": [77.46, 77.0]}
    bench.save("variant", {"context": row}, budget, 78.59, spread, "cpu", 20)
    table = (tmp_path / "variant.md").read_text()
    assert "| context | 76.30 | -2.29 | 77.41 (-0.05) | fp32 | 12 | 871 | cpu, torch 2 |" in table
    assert "context ran with `--set augment.image_size=266 data.image_size=300`." in table
    bench.save("plain", {"context": {**row, "set": []}}, budget, 78.59, spread, "cpu", 20)
    assert "ran with" not in (tmp_path / "plain.md").read_text()
    assert json.loads((tmp_path / "variant.json").read_text())["results"][0]["set"] == row["set"]


def test_vit_methods_run_on_the_tiny_vit_with_8x8_patches_of_the_budget(bench):
    cfg = vs.engine.load_config(config="mae", overrides=bench.elpv_overrides("mae", 64))
    assert cfg.backbone.name == "vit_tiny_patch16_224" and (
        cfg.backbone.kwargs.img_size,
        cfg.backbone.kwargs.patch_size,
    ) == (64, 8)
    assert bench.backbone_label(cfg) == "vit_tiny_patch16_224(img_size=64, patch_size=8)"
    dino = vs.engine.load_config(config="dino", overrides=bench.elpv_overrides("dino", 32))
    assert dino.backbone.kwargs.patch_size == 4 and dino.backbone.kwargs.dynamic_img_size  # local crops need it
    assert dino.augment.kwargs.local_size is None  # the preset's SwAV proportion of the budget's size
    assert not any(o.startswith("backbone.") for o in bench.elpv_overrides("barlow_twins", 64))


def test_random_baseline_is_the_methods_own_initialisation(bench):
    from visionssl.methods.mae import mae_init_

    kw = dict(img_size=16, patch_size=4, depth=1)
    torch.manual_seed(3)  # what the baseline does, and what the trainer's seed_everything does first
    baseline = mae_init_(vs.create_backbone("vit_tiny_patch16_224", **kw)).state_dict()  # MAE's own init
    torch.manual_seed(3)
    method = vs.create_method(
        "mae", backbone="vit_tiny_patch16_224", backbone_kwargs=kw, decoder_dim=16, decoder_depth=1
    )
    own = method.backbone.state_dict()
    assert baseline.keys() == own.keys() and all(torch.equal(baseline[k], own[k]) for k in own)
    torch.manual_seed(3)  # dino's ViT (dynamic_img_size) shares the label, the weights and the features of mae's
    dynamic = mae_init_(vs.create_backbone("vit_tiny_patch16_224", dynamic_img_size=True, **kw)).eval()
    assert all(torch.equal(baseline[k], v) for k, v in dynamic.state_dict().items())
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(dynamic(x), method.backbone.eval()(x), atol=1e-6)


def test_save_scores_a_row_on_another_backbone_against_its_own_random_weights(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path)
    vit = "vit_tiny_patch16_224(img_size=64, patch_size=8)"
    vit_spread = {"seeds": [70.0, 72.0], "mean": 71.0, "std": 1.0, "cross_validated": [69.0, 71.0]}
    rows = {
        "mae": {
            "method": "mae",
            "knn_top1": 73.0,
            "gain_over_random": 3.0,
            "train_4fold_top1": 70.5,
            "train_4fold_gain": 1.5,
            "train_seconds": 100.0,
            "precision": "bf16",
            "epochs_done": 12,
            "set": [],
            "backbone": vit,
            "random_knn_top1": 70.0,
            "random_knn_top1_over_seeds": vit_spread,
        }
    }
    budget = {"backbone": "resnet18", "image_size": 64, "batch_size": 32, "epochs": 12, "k": 20, "seed": 0}
    spread = {"seeds": [78.59, 77.0], "mean": 77.795, "std": 0.795, "cross_validated": [77.46, 77.0]}
    bench.save("vit", rows, budget, 78.59, spread, "cpu", 20)
    table = (tmp_path / "vit.md").read_text()
    assert f"| random weights, {vit} (seed 0, the initialisation of mae) | 70.00 | | 69.00 | | | | |" in table
    assert (
        f"| random weights, {vit}, 2 seeds: mean +- std | 71.00 +- 1.00 (70.00-72.00) | | 70.00 (69.00-71.00) |"
        in table
    )
    assert f"| mae on {vit} | 73.00 | +3.00 | 70.50 (+1.50) | bf16 | 12 | 100 |" in table


def test_dino_left_out_of_the_vit_methods_runs_on_the_budgets_backbone_without_its_vit_arguments(bench):
    import argparse

    args = argparse.Namespace(
        image_size=64, batch_size=32, epochs=12, seed=0, k=20, validation=False, out="runs/x",
        backbone="resnet18", vit_methods=["mae"], set=["backbone.kwargs.drop_path_rate=0.05"],
    )  # fmt: skip
    cfg = bench.method_config("dino", args, 72, "cpu")
    assert cfg.backbone.name == "resnet18" and bench.to_dict(cfg.backbone.kwargs) == {"drop_path_rate": 0.05}
    assert cfg.augment.kwargs.global_scale == [0.6, 1.0]  # its elpv adaptation still applies
    vit = bench.method_config("mae", args, 72, "cpu")
    assert bench.backbone_label(vit) == "vit_tiny_patch16_224(drop_path_rate=0.05, img_size=64, patch_size=8)"
    vit_dino = bench.method_config(
        "dino", argparse.Namespace(**{**vars(args), "vit_methods": ["dino", "mae"]}), 72, "cpu"
    )
    assert vit_dino.backbone.name == "vit_tiny_patch16_224" and vit_dino.backbone.kwargs.patch_size == 8
