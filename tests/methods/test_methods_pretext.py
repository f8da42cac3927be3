"""Rotation, context and jigsaw methods (and DeepCluster's registration/recipes) on small backbones."""

import pytest
import torch

import visionssl as vs
from visionssl.engine.config import load_config
from visionssl.methods.context import ContextPrediction
from visionssl.methods.jigsaw import Jigsaw
from visionssl.methods.rotation import RotationPrediction

from conftest import TinyNet

PRETEXT = ["rotation", "context", "jigsaw", "deepcluster"]
SMALL_HEADS = {
    "rotation": {},
    "context": {"patch_size": 8, "gap": 3, "jitter": 1, "head_hidden_dim": 64},
    "jigsaw": {"num_permutations": 100, "tile_dim": 32, "head_hidden_dim": 64},
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path))  # permutation sets are written here, not in ~


def grads_flow(method: torch.nn.Module) -> None:
    backbone_grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in backbone_grads) and any(bool(g.abs().sum() > 0) for g in backbone_grads)
    heads = [p for n, p in method.named_parameters() if not n.startswith("backbone.")]
    assert heads and all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in heads)


def test_registered_with_one_view_and_their_preset():
    for name in PRETEXT:
        assert name in vs.list_methods()
        cls = vs.methods.METHODS.get(name)
        assert cls.num_views == 1 and cls.augmentation in vs.augment.list_augmentations()


@pytest.mark.parametrize("name", PRETEXT)
def test_recipes_load_and_build(name):
    cfg = load_config(name)
    assert cfg.method.name == name and cfg.augment.image_size == 32
    imagenet = load_config(config=f"{name}_imagenet")
    assert imagenet.method.name == name and imagenet.augment.image_size >= 64
    if name == "deepcluster":
        assert imagenet.method.num_clusters == 10000 and imagenet.method.pca_dim == 256
    hparams = {k: v for k, v in cfg.method.items() if k != "name"}
    method = vs.create_method(name, backbone=TinyNet(), **hparams)
    assert method.num_views == 1


@pytest.mark.parametrize(
    "name, backbone, hparams, batch",
    [
        ("rotation", "resnet10t_cifar", {}, 1),  # 4 rotations of a 32 px image
        ("context", "resnet10t_cifar", {}, 2),  # 8 px patches
        ("context", "resnet18_cifar", {}, 2),
        ("jigsaw", "resnet10t_cifar", {}, 2),  # 8 px tiles
        ("jigsaw", "resnet18_cifar", {"tile_size": 10}, 2),  # 10 px tiles: the whole 10 px cell
    ],
)
def test_forward_backward_on_32px_with_cifar_resnets(name, backbone, hparams, batch):
    method = vs.create_method(name, backbone=backbone, **SMALL_HEADS[name], **hparams)
    seen = []
    method.backbone.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    out = method([torch.randn(batch, 3, 32, 32)])
    side = {"rotation": 32, "context": 8, "jigsaw": hparams.get("tile_size", 8)}[name]
    count = {"rotation": 4, "context": 2, "jigsaw": 9}[name] * batch
    assert seen == [(count, 3, side, side)]  # one backbone pass over all rotations / patches / tiles
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["embedding"].shape == (batch, method.num_features) and not out["embedding"].requires_grad
    accuracy = out[f"{name}/accuracy"]  # pretext accuracy, logged by the trainer as a scalar
    assert accuracy.ndim == 0 and 0 <= float(accuracy) <= 1
    assert sorted(out) == sorted(["loss", "embedding", f"{name}/accuracy"])
    out["loss"].backward()
    grads_flow(method)


def test_rotation_embedding_is_the_unrotated_images_features():
    method = RotationPrediction(backbone=TinyNet()).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = method([x])
        assert torch.allclose(out["embedding"], method.backbone(x), atol=1e-5)


def test_rotation_loss_is_cross_entropy_over_the_four_rotations():
    method = RotationPrediction(backbone=TinyNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = method([x])
        logits = torch.cat([method.classifier(method.backbone(torch.rot90(x, k, (-2, -1)))) for k in range(4)])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert torch.allclose(out["loss"], torch.nn.functional.cross_entropy(logits, labels), atol=1e-5)
    assert float(out["rotation/accuracy"]) == float((logits.argmax(1) == labels).float().mean())


def test_context_colour_modes_and_geometry():
    x = torch.randn(2, 3, 32, 32)
    for color in ("drop", "project", "none"):
        out = ContextPrediction(backbone=TinyNet(), color=color, head_hidden_dim=32)([x])
        assert torch.isfinite(out["loss"])
    auto = ContextPrediction(backbone=TinyNet(), head_hidden_dim=32)
    assert auto.geometry(32) == (7, 3, 1) and auto.geometry(398) == (96, 48, 7)
    assert ContextPrediction(backbone=TinyNet(), patch_size=8, head_hidden_dim=32).geometry(32) == (8, 3, 1)
    with pytest.raises(ValueError, match="color must be one of drop, project, none"):
        ContextPrediction(backbone=TinyNet(), color="gray")
    with pytest.raises(ValueError, match="spans"):
        ContextPrediction(backbone=TinyNet(), patch_size=12, head_hidden_dim=32)([x])


def test_context_geometry_as_fractions_of_the_view_scales_with_it():
    m = ContextPrediction(backbone=TinyNet(), patch_size=0.3125, gap=0.03125, jitter=0)
    assert m.geometry(32) == (10, 1, 0) and m.geometry(64) == (20, 2, 0)
    assert load_config(config="context").method.patch_size == 0.3125  # the small recipe: 10 px at 32 px
    out = m([torch.randn(2, 3, 64, 64)])
    assert out["embedding"].shape[0] == 2 and torch.isfinite(out["loss"])


@pytest.mark.parametrize("override", ["method.patch_size=1.5", "method.patch_size=0", "method.jitter=-1"])
def test_context_geometry_values_are_checked_with_the_config(override):
    with pytest.raises(vs.errors.ConfigError, match="method.(patch_size|jitter)"):
        load_config(config="context", overrides=[override])


def test_context_on_grayscale_backbones_skips_colour_dropping():
    method = ContextPrediction(backbone=TinyNet(in_chans=1), head_hidden_dim=32)
    out = method([torch.randn(2, 1, 32, 32)])
    out["loss"].backward()
    grads_flow(method)


def test_jigsaw_permutations_are_a_saved_buffer():
    method = Jigsaw(backbone=TinyNet(), num_permutations=100, tile_dim=None, head_hidden_dim=32)
    assert method.num_permutations == 100 and "permutations" in method.state_dict()
    assert method.classifier[0].in_features == 9 * method.num_features  # tile_dim=None: raw features
    assert vs.augment.pretext.min_hamming_distance(method.permutations) >= 6


def test_single_view_is_required():
    method = RotationPrediction(backbone=TinyNet())
    with pytest.raises(ValueError, match="takes 1 view, got 2"):
        method([torch.randn(2, 3, 16, 16)] * 2)


def test_unknown_hyperparameter_names_the_closest():
    with pytest.raises(ValueError, match="did you mean 'num_permutations'"):
        vs.create_method("jigsaw", backbone=TinyNet(), num_permutation=100)


@pytest.mark.parametrize("name, size", [("rotation", 16), ("context", 32), ("jigsaw", 32)])
def test_a_few_sgd_steps_lower_the_loss(name, size):
    torch.manual_seed(0)
    method = vs.create_method(name, backbone=TinyNet(), **SMALL_HEADS[name])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(4, 3, size, size)
    losses = []
    for _ in range(6):
        torch.manual_seed(1)  # the same pretext draws every step: the loss must fall on this batch
        loss = method([x])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
