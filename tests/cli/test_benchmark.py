import csv
import json

import pytest
import torch

import visionssl as vs
from visionssl.cli.benchmark import run_benchmark
from visionssl.engine.checkpoint import atomic_save

OUTPUTS = ["results.md", "results.csv", "results.json", "accuracy.png", "knn_over_epochs.png"]


def save_checkpoint(path, seed):
    """A visionssl checkpoint of a randomly initialised resnet10t_cifar (what pretraining would leave)."""
    torch.manual_seed(seed)
    net = vs.create_backbone("resnet10t_cifar")
    atomic_save(
        {
            "format": "visionssl",
            "version": 1,
            "config": {"backbone": {"name": "resnet10t_cifar", "kwargs": {}}, "augment": {"image_size": 16}},
            "method": {"backbone." + k: v for k, v in net.state_dict().items()},
        },
        path,
    )
    return path


@pytest.fixture
def checkpoints(tmp_path):
    run = tmp_path / "run_a"
    save_checkpoint(run / "checkpoints" / "last.pt", seed=1)
    lines = [
        {"step": 10, "epoch": 1.0, "loss": 4.1},
        {"step": 10, "epoch": 1.0, "knn/top1": 40.0, "knn/top5": 100.0},
        {"step": 20, "epoch": 2.0, "knn/top1": 55.5},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"cut sho')
    return [str(run), str(save_checkpoint(tmp_path / "b.pt", seed=2)), "random"]


class ForwardCounter:
    """Counts every nn.Module forward call in the process while active."""

    def __enter__(self):
        self.calls = 0
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def _hook(self, module, inputs, output):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


def test_knn_then_linear_probe_benchmark_writes_every_output_and_reuses_the_feature_cache(checkpoints, tmp_path):
    out = tmp_path / "bench"
    datasets = ["synthetic:24", "synthetic:16"]
    first = run_benchmark("knn", checkpoints, datasets, out, k=(10, 5), progress=False, echo=lambda s: None)
    names = [checkpoints[0], checkpoints[1], "random (resnet10t_cifar)"]
    assert [(r["checkpoint"], r["dataset"]) for r in first["rows"]] == [(n, d) for n in names for d in datasets]
    assert all(r["features"] == "computed" for r in first["rows"])
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for name in ("accuracy.png", "knn_over_epochs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == first["rows"] and saved["files"] == OUTPUTS
    assert saved["curves"] == {checkpoints[0]: [{"epoch": 1.0, "knn/top1": 40.0}, {"epoch": 2.0, "knn/top1": 55.5}]}
    assert saved["settings"]["image_size"] == 16  # from the run's config
    row = first["rows"][0]
    assert row["top1"] == row["top1@k10"] and {"top5@k10", "top1@k5", "top5@k5"} <= set(row)
    assert sum(s["mean_rank"] for s in saved["summary"]) == pytest.approx(1 + 2 + 3)  # ranks 1..3 per dataset
    for s in saved["summary"]:
        mine = [r["top1"] for r in first["rows"] if r["checkpoint"] == s["checkpoint"]]
        assert s["mean_top1"] == pytest.approx(sum(mine) / len(mine), abs=1e-4) and s["datasets"] == 2
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and float(table[0]["top1"]) == pytest.approx(row["top1"])
    markdown = (out / "results.md").read_text()
    assert "| checkpoint | dataset | top1@k10 | top5@k10 | top1@k5 | top5@k5 | features |" in markdown
    assert f"| {checkpoints[0]} | synthetic:24 | {row['top1']:.2f} | - |" in markdown  # top-5 of 4 classes: "-"
    assert "Transfer-suite summary (top-1 at k=10)" in markdown

    with ForwardCounter() as counter:  # same checkpoints and data: no backbone (or any module) runs again
        second = run_benchmark(
            "linear-probe", checkpoints, datasets, out, probe_options={"epochs": 5}, progress=False, echo=lambda s: None
        )
    assert counter.calls == 0
    assert all(r["features"] == "cached" for r in second["rows"])
    assert {"lr", "weight_decay", "val_top1", "sweep"} <= set(second["rows"][0])
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    third = run_benchmark("linear-probe", checkpoints, datasets, out, progress=False, echo=lambda s: None)
    row = third["rows"][0]  # the defaults: L-BFGS, C picked by 5-fold; the table says so
    assert row["solver"] == "lbfgs" and row["selection"] == "5-fold" and row["C"] in [10.0**k for k in range(-4, 3)]
    assert (
        "| top1 | top5 | solver | selection | C | lr | weight_decay | val_top1 | features |"
        in (out / "results.md").read_text()
    )


def test_cli_benchmark_knn(checkpoints, tmp_path, capsys):
    from visionssl.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "benchmark",
            "knn",
            "--checkpoint",
            checkpoints[1],
            "--checkpoint",
            "random:resnet10t_cifar",
            "--data",
            "synthetic:16",
            "--out",
            str(out),
            "--k",
            "5",
            "3",
            "--no-progress",
            "--no-plots",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| random (resnet10t_cifar) | synthetic:16 |" in printed and "mean rank" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["command"].startswith(
        f"visionssl benchmark knn --checkpoint {checkpoints[1]} --checkpoint random:resnet10t_cifar"
    )
    assert saved["files"] == ["results.md", "results.csv", "results.json"] and not (out / "accuracy.png").exists()


def test_bad_benchmark_requests(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark kind 'svm'; valid: knn, linear-probe"):
        run_benchmark("svm", checkpoints, ["synthetic:8"], tmp_path)
    with pytest.raises(ValueError, match="'random' copies the backbone of the first checkpoint"):
        run_benchmark("knn", ["random"], ["synthetic:8"], tmp_path, image_size=16, progress=False)
    with pytest.raises(Exception, match="no zoo entry named 'no_such_run'"):
        run_benchmark("knn", ["no_such_run"], ["synthetic:8"], tmp_path, image_size=16, progress=False)
