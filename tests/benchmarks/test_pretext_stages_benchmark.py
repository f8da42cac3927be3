"""benchmarks/pretext_stages.py: every stage of a trained run scored against the same stage of its initialisation."""

import pytest
import torch

import visionssl as vs
from visionssl.data.dataset import ImageDataset
from visionssl.engine import Trainer, load_config


@pytest.fixture()
def bench(load_benchmark):
    return load_benchmark("pretext_stages")


def toy(n: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (labels.view(-1, 1, 1, 1) * 120 + torch.randint(0, 130, (n, 3, 16, 16), generator=g)).to(torch.uint8)
    return ImageDataset(images, {"c": labels}, "c", {"c": ["dark", "bright"]}, "toy")


def test_each_stage_is_scored_against_the_same_stage_of_the_runs_initialisation(bench, tmp_path):
    overrides = ["data.name=synthetic:32", "data.image_size=16", "augment.image_size=16", "optim.batch_size=16"]
    overrides += ["backbone.name=resnet10t_cifar", "train.epochs=1", "train.seed=3", "train.progress=false"]
    cfg = load_config("rotation", overrides=[*overrides, "optim.warmup_epochs=0", f"out={tmp_path / 'rotation'}"])
    Trainer(cfg).fit()
    train, test = toy(24, 0), toy(12, 1)
    folds = bench.stratified_folds(train.targets.numpy(), 4)
    row = bench.stage_scores("rotation", tmp_path / "rotation", train, test, folds, 16, 3)
    assert list(row["stages"]) == ["final", "stage0", "stage1", "stage2", "stage3", "stage4"]
    torch.manual_seed(3)  # the run's seed: its initial weights
    initial = vs.create_backbone("resnet10t_cifar")
    expected = bench.knn_scores(initial, train, test, None, folds, 16, 3, "stage2")
    assert (row["stages"]["stage2"]["random_test"], row["stages"]["stage2"]["random_4fold"]) == expected
    trained = bench.knn_scores(vs.zoo.load_backbone(tmp_path / "rotation"), train, test, None, folds, 16, 3, "stage2")
    assert (row["stages"]["stage2"]["test"], row["stages"]["stage2"]["4fold"]) == trained
    assert row["best_stage"] == max(row["stages"], key=lambda s: row["stages"][s]["4fold"])
    table = bench.markdown([row], "cpu", 16, 3)
    assert table.count("| rotation (1, 3) |") == 6 and "best" in table and row["epochs"] == 1
