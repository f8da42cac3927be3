"""Evaluation at an intermediate stage (``layer="stage3"``): shapes, agreement with timm, cache keyed by layer, CLI."""

import pytest
import torch

import visionssl as vs
from visionssl.data.dataset import ImageDataset
from visionssl.eval.layers import StageFeatures, stage_names


@pytest.mark.parametrize("name", ["resnet10t", "resnet10t_cifar"])  # timm's ResNet stem, and the CIFAR stem
def test_each_stage_is_the_pooled_timm_intermediate(name):
    torch.manual_seed(0)
    net = vs.create_backbone(name).eval()
    assert stage_names(net) == ["final", "stage0", "stage1", "stage2", "stage3", "stage4"]
    x = torch.randn(2, 3, 32, 32)
    strides = (1, 1, 2, 4, 8) if name.endswith("_cifar") else (2, 4, 8, 16, 32)  # no stride-2 stem or max-pool
    for i, (channels, stride) in enumerate(zip((64, 64, 128, 256, 512), strides)):
        out = StageFeatures(net, f"stage{i}")(x)
        assert out.shape == (2, channels)
        maps = net.forward_intermediates(x, indices=[i], intermediates_only=True)[0]
        assert maps.shape[-1] == 32 // stride
        assert torch.allclose(out, maps.mean((2, 3)), atol=1e-5)


def _dataset(n=12):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return ImageDataset(images, {"c": torch.arange(n) % 2}, "c", {"c": ["a", "b"]}, "toy")


def test_feature_cache_is_keyed_by_layer(tmp_path, monkeypatch):
    net, ds = vs.create_backbone("resnet10t_cifar"), _dataset()
    final, _ = vs.eval.extract_features(net, ds, cache_dir=tmp_path, progress=False)
    stage2, labels = vs.eval.extract_features(net, ds, cache_dir=tmp_path, progress=False, layer="stage2")
    stage3, _ = vs.eval.extract_features(net, ds, cache_dir=tmp_path, progress=False, layer="stage3")
    assert (final.shape, stage2.shape, stage3.shape) == ((12, 512), (12, 128), (12, 256))
    assert len(list(tmp_path.glob("*.pt"))) == 3 and labels.tolist() == [0, 1] * 6
    monkeypatch.setattr(StageFeatures, "forward", lambda *a: pytest.fail("read from the cache, not recomputed"))
    again, _ = vs.eval.extract_features(net, ds, cache_dir=tmp_path, progress=False, layer="stage2")
    assert torch.equal(again, stage2)


def test_bad_layer_names_the_valid_stages():
    with pytest.raises(
        ValueError, match="unknown layer 'layer3'; valid: final, stage0, stage1, stage2, stage3, stage4"
    ):
        vs.eval.extract_features(vs.create_backbone("resnet10t_cifar"), _dataset(), progress=False, layer="layer3")
    with pytest.raises(ValueError, match="valid: final .*no timm feature_info"):
        StageFeatures(torch.nn.Linear(2, 2), "stage1")


def test_cli_eval_layer(tmp_path, capsys):
    from visionssl.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--method",
                "rotation",
                "--backbone",
                "resnet10t_cifar",
                "--data",
                "synthetic:16",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--image-size",
                "16",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", str(run), "--layer", "stage9", "--no-baseline", "--k", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'stage9'; valid: final, stage0" in err and "Traceback" not in err
    assert main(["eval", "knn", "--checkpoint", str(run), "--layer", "stage2", "--k", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "features of stage2" in out and out.count("top-1") == 2  # the checkpoint and its random baseline


def test_quick_start_never_picks_a_pretext_method():
    import re
    from pathlib import Path

    from visionssl.engine.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    recipe = re.search(r"visionssl pretrain --config (\S+) --out runs/quickstart", readme).group(1)
    pretext = {"rotation", "jigsaw", "context", "deepcluster"}
    assert load_config(config=recipe).method.name not in pretext
    assert load_config().method.name not in pretext  # `visionssl pretrain` without --method
