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


@pytest.fixture()
def peer(bench):
    """benchmarks/_lightly_peer.py, the LightlySSL side, as the benchmark imported it."""
    return sys.modules["_lightly_peer"]


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


SMALL_HEADS = {
    "simsiam": {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 16},
    "barlow_twins": {"proj_dim": 48},
    "swav": {"proj_hidden_dim": 64, "proj_dim": 32, "num_prototypes": 24},
    "dino": {"out_dim": 40, "hidden_dim": 32, "bottleneck_dim": 16},
}
PEER_WIDTHS = {  # what the LightlySSL heads must read: (hidden, output) and the method's other widths
    "simsiam": ((64, 32), {"predictor": (16, 32)}),
    "barlow_twins": ((48, 48), {}),
    "swav": ((64, 32), {"prototypes": (24, 24)}),
    "dino": ((32, 40), {"head_momentum": (32, 40)}),
}


@pytest.mark.parametrize("method", list(SMALL_HEADS))
def test_peer_starts_from_the_same_weights_with_the_same_head_widths(peer, method):
    import copy

    import torch

    import visionssl as vs

    ours = vs.create_method(method, backbone="resnet10t_cifar", **SMALL_HEADS[method])
    model = peer.LightlyMethod(method, copy.deepcopy(ours.backbone), ours)
    start = ours.backbone.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in model.backbone.state_dict().items())
    head, others = PEER_WIDTHS[method]
    assert peer.widths(model.head) == head
    assert all(peer.widths(getattr(model, name)) == want for name, want in others.items())
    if method == "dino":
        assert model.head.last_layer.weight_v.shape == (40, 16)  # the same bottleneck
        assert all(torch.equal(v, start[k]) for k, v in model.backbone_momentum.state_dict().items())
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    views += [torch.randn(4, 3, 8, 8) for _ in range(2 if method in peer.MULTI_CROP else 0)]
    loss = model.training_step(views, 0, 10)
    assert math.isfinite(float(loss.detach()))
    if method == "simsiam":
        assert -1.0 <= float(loss.detach()) <= 1.0  # a negative cosine similarity


def test_swav_barlow_twins_and_dino_train_both_sides_at_a_dry_budget(bench, tmp_path):
    args = ["--methods", "swav", "barlow_twins", "dino", "--seeds", "0", "--epochs", "1", "--image-size", "16"]
    args += ["--batch-size", "8", "--max-images", "24", "--backbone", "resnet10t_cifar", "--workers", "0"]
    path = bench.main([*args, "--k", "5", "--device", "cpu", "--out", str(tmp_path / "runs"), "--results", "multi"])
    result = json.loads(path.read_text())
    rows = {(r["method"], r["side"]): r for r in result["rows"]}
    assert len(result["rows"]) == len(rows) == 3 * 3
    for method in ("swav", "barlow_twins", "dino"):
        for side in ("visionssl", "lightly"):
            row = rows[method, side]
            assert all(math.isfinite(v) and 0 <= v <= 100 for v in row["scores"].values()), row
            assert len(row["loss_curve"]) == 1 and math.isfinite(row["loss_curve"][0])
    assert rows["swav", "lightly"]["loss_chance"] == pytest.approx(math.log(256))  # elpv's 256 prototypes
    assert rows["dino", "lightly"]["loss_chance"] == pytest.approx(math.log(4096))
    assert rows["barlow_twins", "lightly"]["loss_chance"] is None
    for method in ("swav", "dino"):  # their examples' optimizer
        assert rows[method, "lightly"]["peer_optimizer"] == "adam"
        assert rows[method, "lightly"]["peer_lr"] == pytest.approx(1e-3)
    assert "peer_optimizer" not in rows["barlow_twins", "lightly"] and rows["barlow_twins", "lightly"]["peer_lr"] == 0.1
    table = path.with_suffix(".md").read_text()
    assert all(f"| {m} | defect |" in table for m in ("swav", "barlow_twins", "dino"))
    assert "non-finite" not in table


@pytest.mark.parametrize("method", ["swav", "dino"])
@pytest.mark.parametrize("views", ["own", "simclr"])
def test_the_multi_crop_transforms_give_two_global_crops_of_the_image_size_then_the_local_crops(peer, method, views):
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 36, 3), dtype=np.uint8))
    for size, local in ((32, 16), (64, 24)):  # local: visionssl's local_crop_size, SwAV's 96/224 in multiples of 8
        crops = peer.lightly_transform(method, size, views=views)(image)
        assert [tuple(c.shape) for c in crops] == [(3, size, size)] * 2 + [(3, local, local)] * 6


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


def test_the_table_names_the_adam_rate_a_diverged_swav_or_dino_peer_was_retried_at(bench):
    budget = {"peer_lr": 0.1, "epochs": 1}
    rows = [
        {"method": "dino", "seed": 0, "side": "lightly", "scores": {}, "peer_lr": 1e-4, "peer_optimizer": "adam"},
        {"method": "dino", "seed": 1, "side": "lightly", "scores": {}, "peer_lr": 1e-3, "peer_optimizer": "adam"},
        {"method": "barlow_twins", "seed": 0, "side": "lightly", "scores": {}, "peer_lr": 0.1},
    ]
    table = bench.markdown({}, budget, "cpu", rows)
    assert "LightlySSL dino: Adam lr 0.0001 at seeds 0 (its loss went non-finite at 0.001)." in table
    assert "barlow_twins" not in table and "seeds 1" not in table  # each at its optimizer's first rate
    assert "at seeds 0 (its loss went non-finite at 0.01)" in bench.markdown(
        {}, {**budget, "peer_adam_lr": 0.01}, "cpu", rows
    )


def crop_scales(transform) -> list[tuple[float, float]]:
    """The (min, max) area fractions of every crop of a LightlySSL transform, view by view."""
    if type(transform).__name__ == "RandomResizedCrop":  # torchvision's v1 or v2, as LightlySSL picks
        return [tuple(transform.scale)]
    inner = list(getattr(transform, "transforms", [])) + [getattr(transform, "transform", None)]
    return [scale for t in inner if t is not None for scale in crop_scales(t)]  # views nest Compose in Compose


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "vicreg", "barlow_twins"])
def test_peer_min_scale_reaches_every_crop_of_the_lightly_transform(peer, method):
    default, control = peer.lightly_transform(method, 32), peer.lightly_transform(method, 32, min_scale=0.6)
    assert crop_scales(control) and {s[0] for s in crop_scales(control)} == {0.6}
    assert {s[0] for s in crop_scales(default)} <= {0.08, 0.2}  # LightlySSL's own defaults


@pytest.mark.parametrize(
    ("method", "own"),
    [("swav", [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6), ("dino", [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 6)],
)
def test_peer_min_scale_reaches_the_global_crops_of_the_multi_crop_transforms(peer, method, own):
    assert crop_scales(peer.lightly_transform(method, 32)) == own  # the examples' scales
    assert crop_scales(peer.lightly_transform(method, 32, min_scale=0.6)) == [(0.6, 1.0)] * 2 + own[2:]


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


@pytest.mark.parametrize("method", ["moco", "byol", "barlow_twins"])
def test_peer_views_simclr_gives_every_two_view_method_the_plain_loops_transform(peer, method):
    transform = peer.lightly_transform(method, 32, min_scale=0.3, views="simclr")
    assert type(transform).__name__ == "SimCLRTransform"
