"""benchmarks/probe_vs_sklearn.py at a tiny size: rows compare the same folds, the speed case times both fits."""

import pytest

pytest.importorskip("sklearn")


@pytest.fixture()
def bench(load_benchmark):
    return load_benchmark("probe_vs_sklearn")


def test_a_row_holds_all_three_protocols_and_the_verdict(bench):
    row = bench.compare("toy", *bench.mixture(300, 8, 3, 1.0, seed=0, test=200))
    assert (row["train"], row["test"], row["dim"], row["classes"]) == (300, 200, 8, 3)
    assert row["solver"] == "lbfgs" and row["selection"] == "5-fold"
    assert row["visionssl_C"] == row["sklearn_C"] and row["visionssl"] == pytest.approx(row["sklearn"], abs=0.5)
    assert row["ok"] == (row["visionssl"] >= row["sklearn"] - 0.3 and row["visionssl"] >= row["sgd100"])
    assert "| toy | 300 / 8 / 3 |" in bench.markdown({"machine": "cpu", "note": "", "rows": [row], "speed": None})


def test_speed_case_times_sklearn_on_the_same_split_and_with_its_default_cv(bench):
    speed = bench.speed_case(60.0, n=25_000, dim=4, classes=3)
    assert speed["selection"] == "validation" and speed["Cs"] == len(bench.DEFAULT_CS)
    for key in ("sklearn", "sklearn_5fold"):
        assert speed[f"{key}_s"] > 0 and speed[f"{key}_speedup"] == pytest.approx(
            speed[f"{key}_s"] / speed["visionssl_s"]
        )
    text = bench.markdown({"machine": "cpu", "note": "", "rows": [], "speed": speed})
    assert "default 5-fold CV" in text and "N = 25,000" in text
