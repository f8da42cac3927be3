"""Barlow Twins, MoCo v3, SwAV, DINO and MAE: losses inside the methods, gradients, schedules, recipes."""
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import visionssl as vs
from visionssl.engine.optim import OPTIMIZERS
from visionssl.methods import method_hparams

SMALL = {
    "barlow_twins": dict(proj_dim=64),
    "mocov3": dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64),
}
CONFIGS = Path(vs.__file__).parent / "configs"


def tiny_backbone():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    net.num_features = 32
    return net


def small(name, backbone=None, **hparams):
    return vs.create_method(name, backbone=tiny_backbone() if backbone is None else backbone, **{**SMALL[name], **hparams})


def views(n=2, batch=8, size=16, local=0, local_size=8):
    return [torch.randn(batch, 3, size, size) for _ in range(n)] + [torch.randn(batch, 3, local_size, local_size) for _ in range(local)]


def steps_lower_the_loss(method, make_views, steps=8, lr=0.05):
    torch.manual_seed(0)
    fixed = make_views()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        loss = method(fixed)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_step_end(step + 1, 1000)
        losses.append(float(loss.detach()))
    return losses


# ---------- Barlow Twins ----------

def test_barlow_twins_method_computes_the_loss_of_its_projections():
    m = small("barlow_twins")
    v = views()
    out = m(v)
    z1, z2 = (m.projector(m.backbone(x)) for x in v)
    torch.testing.assert_close(out["loss"], vs.losses.barlow_twins(z1, z2, 0.0051), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, width", [({"image_size": 224}, 8192), ({"image_size": 32}, 4 * 32), ({"proj_dim": 40}, 40)])
def test_barlow_twins_projector_width(kwargs, width):
    m = vs.create_method("barlow_twins", backbone=tiny_backbone(), proj_layers=1, **kwargs)
    assert m.projector[-1].out_features == width


# ---------- MoCo v3 ----------

def test_mocov3_is_symmetric_infonce_of_predictions_against_momentum_keys():
    m = small("mocov3", temperature=0.5)
    v = views()
    out = m(v)
    p1, p2 = (m.predictor(m.projector(m.backbone(x))) for x in v)
    k1, k2 = (m.momentum_projector(m.momentum_backbone(x)) for x in v)
    expected = vs.losses.infonce(p1, k2, 0.5) + vs.losses.infonce(p2, k1, 0.5)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in m.momentum_backbone.parameters())


def test_mocov3_momentum_rises_to_one():
    m = small("mocov3", momentum=0.5)
    before = [p.clone() for p in m.momentum_projector.parameters()]
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    m.on_step_end(1, 11)  # first update: momentum 0.5
    for b, t, o in zip(before, m.momentum_projector.parameters(), m.projector.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o)
    frozen = [p.clone() for p in m.momentum_projector.parameters()]
    m.on_step_end(11, 11)  # last update: momentum 1
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.momentum_projector.parameters()))


def test_mocov3_random_patch_projection_on_a_vit():
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    m = vs.create_method("mocov3", backbone="vit_tiny_patch16_224", backbone_kwargs=kwargs, freeze_patch_embed=True,
                         proj_hidden_dim=32, proj_dim=16, proj_layers=3, pred_hidden_dim=32)
    before = m.backbone.patch_embed.proj.weight.clone()
    steps_lower_the_loss(m, lambda: views(batch=4), steps=2)
    assert torch.equal(before, m.backbone.patch_embed.proj.weight)
    assert not m.backbone.patch_embed.proj.weight.requires_grad and m.backbone.blocks[0].attn.qkv.weight.grad is not None
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        small("mocov3", freeze_patch_embed=True)


# ---------- every method ----------

@pytest.mark.parametrize("name", list(SMALL))
def test_a_few_sgd_steps_lower_the_loss(name):
    torch.manual_seed(0)
    losses = steps_lower_the_loss(small(name), views)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", list(SMALL))
def test_two_view_methods_reject_other_view_counts(name):
    with pytest.raises(ValueError, match="takes 2 views, got 3"):
        small(name)(views(3))


@pytest.mark.parametrize("name", list(SMALL))
def test_registered_and_listed(name):
    assert name in vs.list_methods()
    method_cls = vs.methods.METHODS.get(name)
    aug = vs.augment.create(method_cls.augmentation, image_size=16)
    assert aug.num_views == method_cls.num_views


@pytest.mark.parametrize("recipe", [f"{m}{s}" for m in SMALL for s in ("", "_imagenet")])
def test_recipes_follow_the_simclr_schema_and_name_valid_hparams(recipe):
    from visionssl.engine.config import load_config

    config = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
    assert set(config) == set(yaml.safe_load((CONFIGS / "simclr.yaml").read_text()))
    load_config(config=str(CONFIGS / f"{recipe}.yaml"))
    method = dict(config["method"])
    assert method.pop("name") == recipe.removesuffix("_imagenet")
    assert set(method) <= set(method_hparams(recipe.removesuffix("_imagenet")))
    assert config["optim"]["name"] in OPTIMIZERS
