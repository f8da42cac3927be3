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

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "methods_elpv.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("methods_elpv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("_common", None)


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
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(sys.modules[bench.write_results.__module__], "RESULTS", tmp_path)
    for seed, rows in ((0, [("rot", -1.0, 0.5), ("dc", 1.0, None)]), (1, [("rot", 2.0, 1.5)])):
        name = "methods_elpv" if seed == 0 else f"methods_elpv_seed{seed}"
        results = [{"method": m, "gain_over_random": t, **({"train_4fold_gain": f} if f is not None else {})} for m, t, f in rows]
        (tmp_path / f"{name}.json").write_text(json.dumps({"budget": {"seed": seed}, "results": results}))
    bench.summarize_seeds()
    summary = json.loads((tmp_path / "methods_elpv_seeds.json").read_text())["methods"]
    assert summary["rot"]["mean_test_gain"] == pytest.approx(0.5) and summary["rot"]["mean_train_4fold_gain"] == pytest.approx(1.0)
    assert summary["dc"]["mean_test_gain"] == pytest.approx(1.0) and summary["dc"]["mean_train_4fold_gain"] is None
    table = (tmp_path / "methods_elpv_seeds.md").read_text()
    assert "| rot | -1.00 / +0.50 | +2.00 / +1.50 | +0.50 | +1.00 | 2 |" in table
    assert "| dc | +1.00 / - |  | +1.00 | - | 1 |" in table
