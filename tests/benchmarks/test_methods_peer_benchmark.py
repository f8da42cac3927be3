"""benchmarks/methods_peer.py at a tiny dry budget: both sides train, both labels are scored, files are written."""

import json
import math
import sys

import pytest

pytest.importorskip("lightly")


@pytest.fixture()
def bench(load_benchmark, monkeypatch, tmp_path):
    module = load_benchmark("methods_peer")
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path / "results")
    return module


def test_dry_budget_trains_both_sides_and_writes_mean_and_spread(bench, tmp_path):
    path = bench.main(
        [
            "--methods",
            "moco",
            "--seeds",
            "0",
            "1",
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--batch-size",
            "8",
            "--max-images",
            "24",
            "--backbone",
            "resnet10t_cifar",
            "--workers",
            "0",
            "--k",
            "5",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "runs"),
            "--results",
            "dry",
        ]
    )
    result = json.loads(path.read_text())
    assert path.parent == tmp_path / "results" and result["device"]
    assert len(result["rows"]) == 2 * 3  # seeds x sides (visionssl, LightlySSL, the untrained start)
    for method in ("moco",):
        for side in ("visionssl", "lightly"):
            for label in ("defect", "type"):
                s = result["summary"][method][side][label]
                values = [r["scores"][label] for r in result["rows"] if r["method"] == method and r["side"] == side]
                assert s["n"] == 2 and s["mean"] == pytest.approx(sum(values) / 2)
                assert s["std"] == pytest.approx(abs(values[0] - values[1]) / 2)
                assert all(0 <= v <= 100 for v in values)
    table = path.with_suffix(".md").read_text()
    assert "| moco | defect |" in table and "| moco | type |" in table and result["device"] in table


def test_peer_starts_from_the_same_weights_with_the_same_head_widths(bench):
    import torch

    import visionssl as vs

    ours = vs.create_method("simsiam", backbone="resnet10t_cifar", proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=16)
    peer = bench.LightlyMethod("simsiam", ours.backbone, ours)
    assert bench.widths(peer.head) == (64, 32) and bench.widths(peer.predictor) == (16, 32)
    x0, x1 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss = peer.training_step(x0, x1, 0, 10)
    assert -1.0 <= float(loss.detach()) <= 1.0  # a negative cosine similarity


def test_a_rerun_keeps_finished_seeds_and_adds_new_ones(bench, tmp_path):
    args = ["--methods", "simsiam", "--epochs", "1", "--image-size", "16", "--batch-size", "8", "--max-images", "24"]
    args += ["--backbone", "resnet10t_cifar", "--workers", "0", "--k", "5", "--device", "cpu"]
    args += ["--out", str(tmp_path / "runs"), "--results", "resume"]
    first = json.loads(bench.main([*args, "--seeds", "0"]).read_text())
    second = json.loads(bench.main([*args, "--seeds", "0", "1"]).read_text())
    assert second["rows"][:3] == first["rows"]  # seed 0 is not trained again
    sides = ["visionssl", "lightly", "untrained"]
    assert [(r["seed"], r["side"]) for r in second["rows"]] == [(s, side) for s in (0, 1) for side in sides]
    assert second["budget"]["seeds"] == [0, 1] and second["summary"]["simsiam"]["visionssl"]["defect"]["n"] == 2
    # seeds run side by side into their own files merge into one table
    bench.main([*args[:-1], "solo1", "--seeds", "1"])
    merged = json.loads(bench.main(["--merge", "resume", "solo1", "--results", "merged"]).read_text())
    assert merged["summary"]["simsiam"]["untrained"]["type"]["n"] == 3 and merged["budget"]["seeds"] == [0, 1]
    # --set is part of the budget: a rerun with other overrides does not keep the rows of the first
    other = [*args[:-4], "--out", str(tmp_path / "runs_set"), "--results", "resume", "--seeds", "1"]
    third = json.loads(bench.main([*other, "--set", "method.proj_dim=16"]).read_text())
    assert third["budget"]["visionssl_set"] == ["method.proj_dim=16"]
    assert [(r["seed"], r["side"]) for r in third["rows"]] == [(1, side) for side in sides]


def test_a_diverged_peer_is_retried_once_at_a_tenth_of_the_rate(bench, tmp_path, monkeypatch):
    lrs, real = [], bench.train_lightly

    def diverges_at_full_rate(method, initial, ours, train, args, device, lr):
        lrs.append(lr)
        backbone, _, curve = real(method, initial, ours, train, args, device, lr)
        return backbone, lr < args.peer_lr, curve

    monkeypatch.setattr(bench, "train_lightly", diverges_at_full_rate)
    args = ["--methods", "vicreg", "--epochs", "1", "--image-size", "16", "--batch-size", "8", "--max-images", "24"]
    args += ["--backbone", "resnet10t_cifar", "--workers", "0", "--k", "5", "--device", "cpu", "--seeds", "0"]
    path = bench.main([*args, "--out", str(tmp_path / "runs"), "--results", "retry"])
    rows = json.loads(path.read_text())["rows"]
    assert lrs == [0.1, pytest.approx(0.01)]
    assert (
        "LightlySSL vicreg: SGD lr 0.01 at seeds 0 (its loss went non-finite at 0.1)."
        in path.with_suffix(".md").read_text()
    )
    peer = next(r for r in rows if r["side"] == "lightly")
    assert peer["peer_lr"] == pytest.approx(0.01) and 0 <= peer["scores"]["defect"] <= 100


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "vicreg"])
def test_peer_min_scale_reaches_every_crop_of_the_lightly_transform(bench, method):
    def crop_scales(transform) -> list[tuple[float, float]]:
        if type(transform).__name__ == "RandomResizedCrop":  # torchvision's v1 or v2, as LightlySSL picks
            return [tuple(transform.scale)]
        inner = list(getattr(transform, "transforms", [])) + [getattr(transform, "transform", None)]
        return [scale for t in inner if t is not None for scale in crop_scales(t)]  # views nest Compose in Compose

    default, control = bench.lightly_transform(method, 32), bench.lightly_transform(method, 32, min_scale=0.6)
    assert crop_scales(control) and {s[0] for s in crop_scales(control)} == {0.6}
    assert {s[0] for s in crop_scales(default)} <= {0.08, 0.2}  # LightlySSL's own defaults


@pytest.mark.parametrize("backbone", ["peer_cnn", "peer_resnet"])
def test_the_shapes_set_at_another_batch_size_is_scored_on_its_labels_into_its_own_file(bench, tmp_path, backbone):
    args = ["--dataset", "shapes:40", "--methods", "moco", "--seeds", "0", "--epochs", "1", "--image-size", "16"]
    args += ["--batch-size", "8", "--backbone", backbone, "--workers", "0", "--k", "3", "--device", "cpu"]
    path = bench.main([*args, "--out", str(tmp_path / "runs")])
    assert path.name == "methods_peer_shapes40_b8.json"  # named by dataset and batch size
    result = json.loads(path.read_text())
    assert result["device"] and result["budget"]["dataset"] == "shapes:40" and result["budget"]["batch_size"] == 8
    assert result["budget"]["visionssl_recipe"] == "plain"  # the elpv adaptation is for elpv only
    assert {r["side"] for r in result["rows"]} == {"visionssl", "lightly", "untrained"}
    for row in result["rows"]:
        assert set(row["scores"]) == {"shape", "shape_4fold", "texture", "texture_4fold"}
        assert 0 <= row["scores"]["shape"] <= 100 and row["feature_rank"] >= 1
    ours, peer = (next(r for r in result["rows"] if r["side"] == side) for side in ("visionssl", "lightly"))
    assert len(ours["loss_curve"]) == len(peer["loss_curve"]) == 1 and len(ours["rank_curve"]) == 1
    assert ours["loss_chance"] == pytest.approx(math.log(15 + 1))  # moco: ln(queue + 1), the queue half the 30 images
    table = path.with_suffix(".md").read_text()
    assert "on shapes:40" in table and "| moco | shape |" in table and "| moco | texture |" in table
    assert "| moco | 0 | lightly |" in table  # the loss curves' table


def test_the_holdout_split_is_scored_only_when_asked_and_only_on_shapes(bench, tmp_path, capsys):
    args = ["--dataset", "shapes:40", "--methods", "simclr", "--seeds", "0", "--epochs", "1", "--image-size", "16"]
    args += ["--batch-size", "8", "--backbone", "peer_cnn", "--workers", "0", "--k", "3", "--device", "cpu"]
    path = bench.main([*args, "--eval-split", "holdout", "--out", str(tmp_path / "runs")])
    result = json.loads(path.read_text())
    assert path.name == "methods_peer_shapes40_b8_holdout.json" and result["budget"]["eval_split"] == "holdout"
    assert "on the holdout split" in path.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--eval-split", "holdout"])  # elpv has no holdout split
    assert "elpv has no holdout split" in capsys.readouterr().err


def test_the_digits_set_is_scored_on_its_one_label_with_the_plain_loops_views(bench, tmp_path, capsys):
    pytest.importorskip("sklearn")
    args = ["--dataset", "digits", "--methods", "byol", "--seeds", "0", "--epochs", "1", "--image-size", "16"]
    args += ["--batch-size", "8", "--max-images", "40", "--backbone", "peer_cnn", "--workers", "0", "--k", "3"]
    args += ["--device", "cpu", "--peer-views", "simclr", "--peer-momentum", "0.99", "--peer-min-scale", "0.3"]
    path = bench.main([*args, "--out", str(tmp_path / "runs")])
    assert path.name == "methods_peer_digits_b8.json"
    result = json.loads(path.read_text())
    assert result["budget"]["peer_views"] == "simclr" and result["budget"]["peer_momentum"] == 0.99
    for row in result["rows"]:
        assert set(row["scores"]) == {"digit", "digit_4fold"} and 0 <= row["scores"]["digit"] <= 100
    assert "| byol | digit |" in path.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--dataset", "digits", "--eval-split", "holdout"])
    assert "digits has no holdout split" in capsys.readouterr().err


def test_load_digits_splits_real_images_stratified_at_the_asked_size(bench):
    pytest.importorskip("sklearn")
    import torch

    _common = sys.modules["_common"]  # loaded with the benchmark
    train, test = _common.load_digits("train", 24), _common.load_digits("test", 24)
    assert len(train) + len(test) == 1797 and tuple(test.images.shape[1:]) == (1, 24, 24)
    assert torch.bincount(test.targets, minlength=10).min() >= 40  # every class in the test split
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255  # full range, not 0-16
    with pytest.raises(ValueError, match="valid: train, test, all"):
        _common.load_digits("holdout", 24)


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_peer_views_simclr_gives_every_method_the_plain_loops_transform(bench, method):
    transform = bench.lightly_transform(method, 32, min_scale=0.3, views="simclr")
    assert type(transform).__name__ == "SimCLRTransform"
