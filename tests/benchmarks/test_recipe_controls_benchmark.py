"""benchmarks/recipe_controls.py at a tiny dry budget: one row a run, the table rewritten, budgets kept apart."""

import json
import sys

import pytest


@pytest.fixture()
def bench(load_benchmark, monkeypatch, tmp_path):
    module = load_benchmark("recipe_controls")
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path / "results")
    monkeypatch.chdir(tmp_path)  # run directories under tmp_path
    return module


DRY = ["--epochs", "1", "--image-size", "16", "--batch-size", "8", "--max-images", "24", "--k", "5"]
DRY += ["--backbone", "resnet10t_cifar"]


def test_each_run_adds_a_row_with_its_untrained_start_and_the_table_keeps_its_text(bench, tmp_path):
    path = bench.main(["--methods", "deepcluster", "--seeds", "0", "1", *DRY, "--set", "method.num_clusters=4"])
    rows = json.loads(path.read_text())["rows"]
    assert [(r["method"], r["seed"], r["sets"]) for r in rows] == [
        ("deepcluster", "0", ["method.num_clusters=4"]),
        ("deepcluster", "1", ["method.num_clusters=4"]),
    ]
    for r in rows:
        assert 0 <= r["ours"]["digit"] <= 100 and 0 <= r["untrained"]["digit"] <= 100
        assert r["ours"]["rank"] > 0 and len(r["loss"]) == 1 and r["commit"]
        assert 0 <= r["ours"]["fold4"] <= 100 and 0 <= r["untrained"]["fold4"] <= 100  # the steadier 4-fold figure
    table = path.with_suffix(".md")
    table.write_text("# Notes kept\n\n" + table.read_text().split("\n\n", 1)[1])
    bench.main(["--methods", "rotation", *DRY])
    text = table.read_text()
    assert (
        text.startswith("# Notes kept") and text.count("| digits | resnet10t_cifar | 8 |") == 3 + 1
    )  # 3 runs, 1 summary
    assert "| rotation | 0 | (recipe) (at " in text
    summary = text.split("## Over seeds")[1].split("## Every run")[0]
    assert "| deepcluster | method.num_clusters=4 | 2 |" in summary and "rotation" not in summary
    assert summary.count(" +- ") == 2  # test and 4-fold kNN, each over the seeds


def test_another_budget_is_refused_before_training(bench, capsys):
    bench.main(["--methods", "rotation", *DRY])
    with pytest.raises(SystemExit):
        bench.main(["--methods", "rotation", *DRY[:-2], "--epochs", "2"])
    assert "holds rows of the budget" in capsys.readouterr().err


def test_elpv_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--methods", "rotation", "--dataset", "elpv"])
    assert "digits or shapes" in capsys.readouterr().err


def test_a_run_stopped_by_a_signal_ends_the_benchmark_without_a_row(bench, tmp_path, monkeypatch):
    from visionssl.engine import Trainer

    def stopped(self, resume=False):
        return {"stopped_by": "SIGTERM"}  # what Trainer.fit returns when SIGTERM stops it after a step

    monkeypatch.setattr(Trainer, "fit", stopped)
    with pytest.raises(SystemExit, match="stopped by SIGTERM at epoch .*no row written"):
        bench.main(["--methods", "rotation", "--seeds", "0", "1", *DRY])
    assert not (tmp_path / "results" / "recipe_controls_small.json").exists()  # no row, and no second seed


def test_the_shapes_holdout_is_scored_apart_and_other_sets_have_none(bench, capsys):
    shapes = ["--dataset", "shapes:40", *DRY[:-4], "--k", "3", "--batch-size", "8", "--backbone", "resnet10t_cifar"]
    path = bench.main(["--methods", "rotation", *shapes, "--eval-split", "holdout"])
    (row,) = json.loads(path.read_text())["rows"]
    assert row["ds"] == "shapes:40 (holdout)" and 0 <= row["ours"]["shape"] <= 100
    with pytest.raises(SystemExit):
        bench.main(["--methods", "rotation", *DRY, "--eval-split", "holdout"])
    assert "digits has no holdout split" in capsys.readouterr().err
