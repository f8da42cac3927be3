"""benchmarks/gpu_check.py on the CPU: its dry run writes the results folder and the summary, and the targets are
read from the benchmarks' results files with the right pass/miss and margin."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_the_results_folder_and_the_summary(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the cheap steps; the others are the benchmark scripts, exercised by their own tests
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dry-run",
            "--out",
            str(out),
            "--steps",
            "install",
            "versions",
            "knn",
            "--archive",
            str(tmp_path / "gpu.tar.gz"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {r["step"]: r for r in summary["steps"]}
    assert summary["dry_run"] is True and list(steps) == ["install", "versions", "knn"]
    assert steps["install"]["status"] == "skipped" and steps["versions"]["status"] == steps["knn"]["status"] == "ok"
    versions = json.loads((out / "versions.json").read_text())
    assert versions["cuda_available"] is False and versions["faiss_gpus"] == 0 and versions["torch"]
    knn = json.loads((out / "knn.json").read_text())
    assert (knn["bank"], knn["queries"], knn["dim"], knn["cpu_backend"]) == (20000, 500, 512, "faiss-cpu") and knn[
        "cpu_s"
    ] > 0
    assert steps["knn"]["figures"] == knn
    assert {t["target"]: t["status"] for t in summary["targets"]} == dict.fromkeys(
        ["efficiency_r18_32", "efficiency_r50_224", "vs_lightly_224", "augment_224"], "not measured"
    )
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith("# GPU check (dry run on a CPU): no GPU") and "| knn | ok |" in markdown
    assert (out / "versions.log").is_file() and (tmp_path / "gpu.tar.gz").stat().st_size > 0
    assert "| install | skipped |" in done.stdout  # the summary is printed too


def test_targets_read_the_results_files_with_pass_miss_and_margin(tmp_path):
    gpu_check = load_script()

    def throughput(name: str, efficiency: float, vs_lightly: dict) -> None:
        row = {"images_per_s": {}, "vs_lightly": vs_lightly, "efficiency": efficiency, "batch_size": 8}
        (tmp_path / f"throughput_{name}.json").write_text(
            json.dumps({"settings": {"precision": "bf16"}, "results": [row]})
        )

    throughput("r18_32", 0.9, {"fp32": 3.0, "bf16": 1.5})
    throughput("r50_224", 0.68, {"fp32": 2.6, "bf16": 1.7})
    rows = [
        {"image_size": 32, "ratio_fp32": 90.0},
        {"image_size": 224, "ratio_fp32": 20.0, "ratio_bf16": 40.0, "ratio_kornia_bf16": 60.0},
    ]
    (tmp_path / "augment.json").write_text(json.dumps({"results": rows}))
    got = {t["target"]: t for t in gpu_check.targets(tmp_path)}
    assert (got["efficiency_r18_32"]["status"], got["efficiency_r18_32"]["margin"]) == ("pass", round(0.9 / 0.85, 3))
    assert (got["efficiency_r50_224"]["status"], got["efficiency_r50_224"]["margin"]) == ("miss", 0.8)  # 0.68 / 0.85
    # against LightlySSL at visionssl's own precision (bf16 here): 1.7 / 2 = 0.85, the fp32 ratio named beside it
    assert (got["vs_lightly_224"]["measured"], got["vs_lightly_224"]["status"], got["vs_lightly_224"]["margin"]) == (
        1.7,
        "miss",
        0.85,
    )
    assert "fp32: 2.60x" in got["vs_lightly_224"]["what"]
    # the 224 px row, its fastest backend and precision: 60 / 50
    assert (got["augment_224"]["measured"], got["augment_224"]["status"], got["augment_224"]["margin"]) == (
        60.0,
        "pass",
        1.2,
    )
    assert "kornia_bf16" in got["augment_224"]["what"]


def test_an_unknown_step_or_a_used_folder_is_one_clear_error(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    for extra, message in (
        (["--steps", "nope"], "unknown step(s) nope; valid: install, versions"),
        ([], "already holds files"),
    ):
        out = tmp_path if not extra else tmp_path / "new"
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *extra],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("dry", [True, False])
def test_the_plan_has_every_step_under_its_own_timeout(dry, tmp_path):
    gpu_check = load_script()
    args = type("Args", (), {"dry_run": dry, "wheels": str(tmp_path / "none")})()
    plan = gpu_check.steps(args, tmp_path)
    assert [n for n, _, _ in plan] == [
        "install",
        "versions",
        "cuda_tests",
        "throughput_r18_32",
        "throughput_r50_224",
        "augment",
        "knn",
        "quickstart",
    ]
    assert all(0 < t <= 240 for _, t, _ in plan)
    assert (plan[0][2] is None) is dry  # no install in a dry run
    if not dry:
        assert 'pip install -q -e ".[dev,bench]"' in plan[0][2] and "faiss-gpu" in plan[0][2]
        r50 = plan[4][2]
        assert r50[r50.index("--batch-size") + 1] == "256" and r50[r50.index("--configs") + 1] == "r50_224"
        assert plan[6][2][plan[6][2].index("--bank") + 1] == "1000000"
