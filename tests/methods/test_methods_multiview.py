"""Barlow Twins, MoCo v3, SwAV, DINO and MAE: losses inside the methods, gradients, schedules, recipes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

import visionssl as vs
from visionssl.engine.optim import OPTIMIZERS
from visionssl.methods import method_hparams

from conftest import TinyNet

SMALL = {
    "barlow_twins": dict(proj_dim=64),
    "mocov3": dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64),
    "swav": dict(proj_hidden_dim=64, proj_dim=16, num_prototypes=12, freeze_prototypes_epochs=0),
}
SMALL["dino"] = dict(
    out_dim=16, hidden_dim=32, bottleneck_dim=8, freeze_last_layer_epochs=0, warmup_teacher_temp_epochs=0
)
MULTI_CROP = {"swav", "dino"}
CONFIGS = Path(vs.__file__).parent / "configs"


def tiny_backbone():
    return TinyNet(width=16, stride=2)


def linear_backbone(features):
    """A backbone of ``features`` outputs, for the head-width rules."""
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, features))
    net.num_features = features
    return net


def small(name, backbone=None, **hparams):
    return vs.create_method(
        name, backbone=tiny_backbone() if backbone is None else backbone, **{**SMALL[name], **hparams}
    )


def views(n=2, batch=8, size=16, local=0, local_size=8):
    return [torch.randn(batch, 3, size, size) for _ in range(n)] + [
        torch.randn(batch, 3, local_size, local_size) for _ in range(local)
    ]


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


@pytest.mark.parametrize("features, kwargs, width", [(32, {}, 4 * 32), (2049, {}, 8192), (32, {"proj_dim": 40}, 40)])
def test_barlow_twins_projector_width(features, kwargs, width):
    """None: 4 x the backbone's features, at most the paper's 8192 (``head_width``), whatever the image size."""
    m = vs.create_method("barlow_twins", backbone=linear_backbone(features), proj_layers=1, **kwargs)
    assert m.projector[-1].out_features == width


# ---------- MoCo v3 ----------


def test_mocov3_is_symmetric_infonce_of_predictions_against_momentum_keys():
    m = small("mocov3", temperature=0.5)
    v = views()
    out = m(v)
    p1, p2 = (m.predictor(m.projector(m.backbone(x))) for x in v)
    k1, k2 = (m.target.projector(m.target.backbone(x)) for x in v)
    expected = vs.losses.infonce(p1, k2, 0.5) + vs.losses.infonce(p2, k1, 0.5)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in m.target.backbone.parameters())


def test_mocov3_momentum_rises_to_one():
    m = small("mocov3", momentum=0.5)
    before = [p.clone() for p in m.target.projector.parameters()]
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    m.on_step_end(1, 11)  # first update: momentum 0.5
    for b, t, o in zip(before, m.target.projector.parameters(), m.projector.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * o)
    frozen = [p.clone() for p in m.target.projector.parameters()]
    m.on_step_end(11, 11)  # last update: momentum 1
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.target.projector.parameters()))


def test_mocov3_random_patch_projection_on_a_vit():
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    m = vs.create_method(
        "mocov3",
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=kwargs,
        freeze_patch_embed=True,
        proj_hidden_dim=32,
        proj_dim=16,
        proj_layers=3,
        pred_hidden_dim=32,
    )
    before = m.backbone.patch_embed.proj.weight.clone()
    steps_lower_the_loss(m, lambda: views(batch=4), steps=2)
    assert torch.equal(before, m.backbone.patch_embed.proj.weight)
    assert (
        not m.backbone.patch_embed.proj.weight.requires_grad and m.backbone.blocks[0].attn.qkv.weight.grad is not None
    )
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        small("mocov3", freeze_patch_embed=True)


# ---------- multi-crop ----------


def test_multicrop_preset_draws_each_view_independently_in_one_call_per_group():
    aug = vs.augment.create("multicrop", image_size=16, num_local=3, local_size=8)
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    torch.manual_seed(0)
    out = aug(images)
    assert [tuple(v.shape) for v in out] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[2], out[3])
    calls = []
    for group in aug.pipelines:
        group.register_forward_hook(lambda mod, args, result: calls.append(args[0].shape[0]))
    aug(images)
    assert calls == [2 * 4, 3 * 4]  # one batched call per crop group


def test_multicrop_default_sizes_and_errors():
    aug = vs.augment.create("multicrop", image_size=224)
    assert aug.num_views == 8 and aug.num_local == 6
    with pytest.raises(ValueError, match="num_local >= 0"):
        vs.augment.create("multicrop", image_size=32, num_local=-1)


# ---------- SwAV ----------


def test_swav_method_loss_is_swapped_prediction_of_normalised_scores():
    m = small("swav")
    v = views(local=2)
    out = m(v)
    w = m.prototypes.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(12))  # normalised before the step
    feats = torch.cat([m.backbone(torch.cat(v[:2])), m.backbone(torch.cat(v[2:]))])  # one pass per crop size
    z = torch.nn.functional.normalize(m.projector(feats), dim=1).chunk(4)  # one head call on every crop
    expected = vs.losses.swav([zv @ w.T for zv in z], temperature=0.1)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, head", [("swav", "projector"), ("dino", "head")])
def test_multicrop_head_runs_once_on_all_crops_with_the_batch_norm_statistics_of_all_of_them(name, head):
    # the official main_swav.py / DINO's MultiCropWrapper: backbone once per crop size, the head once on the
    # concatenated features; per-crop calls gave each crop group its own BatchNorm statistics
    m = small(name)
    calls = []
    getattr(m, head).register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    v = views(batch=8, local=4)
    m(v)
    assert calls == [6 * 8]
    if name == "swav":
        feats = torch.cat([m.backbone(torch.cat(v[:2])), m.backbone(torch.cat(v[2:]))]).detach()
        hidden = m.projector[0](feats)
        torch.testing.assert_close(m.projector[1].running_mean, 0.1 * hidden.mean(0), rtol=1e-4, atol=1e-6)


def test_swav_prototypes_are_frozen_during_the_first_epoch():
    m = small("swav", freeze_prototypes_epochs=1)
    m.on_train_start(SimpleNamespace(steps_per_epoch=3))
    for step in range(4):
        m.zero_grad()
        m(views())["loss"].backward()
        frozen = float(m.prototypes.weight.grad.abs().max()) == 0.0
        assert frozen == (step < 3), step
        assert m.projector[0].weight.grad.abs().max() > 0
        m.on_step_end(step + 1, 10)


def test_swav_queue_starts_at_its_epoch_holds_the_newest_first_and_joins_when_full():
    m = small("swav", queue_size=12, queue_start_epoch=1)
    m.on_train_start(SimpleNamespace(steps_per_epoch=2))
    batches = [views(batch=4) for _ in range(5)]
    for step, v in enumerate(batches[:2]):
        m(v)
        m.on_step_end(step + 1, 10)
    assert not m.queue.any()  # epoch 0: no queue
    seen = []
    for step, v in enumerate(batches[2:]):
        m(v)
        seen.append(m.queue[0, :4].clone())
        m.on_step_end(step + 3, 10)
    assert m.queue[0].abs().sum(1).gt(0).all()  # 3 batches of 4 fill 12 rows
    torch.testing.assert_close(m.queue[0, 4:8], seen[1])  # newest first: the previous batch moved down
    torch.testing.assert_close(m.queue[0, 8:12], seen[0])


def test_swav_with_a_full_queue_uses_its_scores_in_sinkhorn():
    m = small("swav", queue_size=8, queue_start_epoch=0)
    m.train()
    m(views(batch=4))
    m(views(batch=4))  # the queue is now full
    queue = m.queue.clone()
    v = views(batch=4)
    torch.manual_seed(5)
    out = m(v)
    w = m.prototypes.weight
    z = torch.nn.functional.normalize(m.projector(m.backbone(torch.cat(v))), dim=1).chunk(2)
    expected = vs.losses.swav([zv @ w.T for zv in z], queue_scores=[queue[i] @ w.T for i in range(2)])
    torch.testing.assert_close(out["loss"], expected, rtol=1e-4, atol=1e-5)


# ---------- DINO ----------


def test_dino_loss_student_on_every_crop_teacher_on_the_globals_then_center_moves():
    m = small("dino")
    with torch.no_grad():
        m.center.fill_(0.5)
    v = views(local=2)
    out = m(v)
    student = list(m.head(torch.cat([m.backbone(torch.cat(v[:2])), m.backbone(torch.cat(v[2:]))])).chunk(4))
    teacher = list(m.target.head(m.target.backbone(torch.cat(v[:2]))).chunk(2))
    center = torch.full((1, 16), 0.5)
    torch.testing.assert_close(out["loss"], vs.losses.dino(student, teacher, center, 0.1, 0.04), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.center, vs.losses.dino_center(center, teacher, 0.9))


def test_dino_teacher_temperature_warms_up_per_epoch():
    m = small("dino", warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    m.on_train_start(SimpleNamespace(steps_per_epoch=10))
    temps = []
    for step in (0, 9, 10, 25, 30, 40, 100):
        m.on_step_end(step, 100)
        temps.append(m.teacher_temperature())
    assert temps == pytest.approx([0.04, 0.04, 0.05, 0.06, 0.07, 0.07, 0.07])


def test_dino_last_layer_frozen_in_the_first_epoch_and_teacher_moves_by_ema():
    m = small("dino", freeze_last_layer_epochs=1, momentum=0.5)
    m.on_train_start(SimpleNamespace(steps_per_epoch=2))
    for step in range(3):
        m.zero_grad()
        m(views())["loss"].backward()
        assert (float(m.head.last_layer.weight.grad.abs().max()) == 0.0) == (step < 2)
        assert all(p.grad is None for p in m.target.head.parameters())
        before = [p.clone() for p in m.target.head.parameters()]
        with torch.no_grad():
            for p in m.head.parameters():
                p.add_(0.1)
        m.on_step_end(step + 1, 3)
        tau = vs.methods.momentum.cosine_momentum(step, 2, 0.5, 1.0)
        for b, t, o in zip(before, m.target.head.parameters(), m.head.parameters()):
            torch.testing.assert_close(t, tau * b + (1 - tau) * o)


def test_epoch_progress_survives_a_checkpoint():
    m = small("dino")
    m.on_train_start(SimpleNamespace(steps_per_epoch=4))
    m.on_step_end(6, 100)
    resumed = small("dino")
    resumed.on_train_start(SimpleNamespace(steps_per_epoch=4))
    assert resumed.epoch == 0
    resumed.load_state_dict(m.state_dict())
    assert resumed.epoch == 1.5


def test_dino_readme_flow_on_a_vit_built_by_name_takes_its_own_multicrop_views():
    # the README example: no dynamic_img_size given; the 16 px local crops used to end in timm's AssertionError
    m = vs.create_method("dino", backbone="vit_tiny_patch16_224", backbone_kwargs={"img_size": 32, "patch_size": 8})
    crops = vs.augment.create(m.augmentation, image_size=32, num_local=2)(torch.randint(0, 256, (2, 3, 40, 40)))
    assert [c.shape[-1] for c in crops] == [32, 32, 16, 16]
    m(crops)["loss"].backward()
    assert m.backbone.dynamic_img_size


@pytest.mark.parametrize("name", sorted(MULTI_CROP))
def test_multicrop_on_a_fixed_size_vit_is_refused_with_one_config_error(name):
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(vs.errors.ConfigError, match="dynamic_img_size=True"):
        vs.create_method(name, backbone="vit_tiny_patch16_224", backbone_kwargs={**kwargs, "dynamic_img_size": False})
    fixed = vs.create_backbone("vit_tiny_patch16_224", **kwargs)
    m = vs.create_method(name, backbone=fixed, **SMALL[name])
    with pytest.raises(vs.errors.ConfigError, match=r"fixed input size \(16, 16\).*dynamic_img_size=True"):
        m(views(batch=4, local=2))


def test_dino_on_a_small_image_vit_with_local_crops():
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, dynamic_img_size=True)
    m = vs.create_method(
        "dino", backbone="vit_tiny_patch16_224", backbone_kwargs=kwargs, out_dim=16, hidden_dim=32, bottleneck_dim=8
    )
    out = m(views(batch=4, local=2))
    out["loss"].backward()
    assert out["embedding"].shape == (4, 32) and m.backbone.blocks[0].attn.qkv.weight.grad.abs().max() > 0


# ---------- MAE ----------

VIT = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def small_mae(**kwargs):
    return vs.create_method(
        "mae",
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={**VIT, **kwargs.pop("vit", {})},
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        **kwargs,
    )


def test_mae_masks_75_percent_per_sample_and_the_encoder_sees_only_the_visible_patches():
    m = small_mae()
    lengths = []
    m.backbone.blocks[0].register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
    torch.manual_seed(0)
    out = m([torch.randn(3, 3, 16, 16)])
    assert out["mask"].shape == (3, 16) and out["mask"].sum(1).tolist() == [12.0] * 3
    assert not torch.equal(out["mask"][0], out["mask"][1])  # per-sample masks
    assert lengths == [1 + 4]  # the class token and the 4 visible patches
    out["loss"].backward()
    assert m.backbone.patch_embed.proj.weight.grad.abs().max() > 0 and m.mask_token.grad.abs().max() > 0


def test_mae_loss_is_the_normalised_pixel_error_on_masked_patches():
    m = small_mae()
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    out = m([x])
    torch.manual_seed(1)
    latent, mask, ids_restore = m.encode_visible(x)
    pred = m.decode(latent, ids_restore)
    assert torch.equal(mask, out["mask"])
    torch.testing.assert_close(out["loss"], vs.losses.mae(pred, vs.losses.patchify(x, 4), mask))
    # the prediction at a visible position does not enter the loss
    pred_grad = torch.autograd.grad(vs.losses.mae(pred, vs.losses.patchify(x, 4), mask), pred)[0]
    assert (pred_grad.abs().sum(-1)[mask == 0] == 0).all()


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_mae_backbone_is_the_encoder_with_pooled_features(pool):
    m = small_mae(vit={"global_pool": pool})
    features = m.backbone(torch.randn(2, 3, 16, 16))
    assert features.shape == (2, m.num_features) == (2, 32)


def test_mae_rejects_a_backbone_that_is_not_a_vit():
    with pytest.raises(ValueError, match="needs a timm ViT backbone"):
        vs.create_method("mae", backbone=tiny_backbone())


def test_mae_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    m = small_mae()
    x = torch.randn(4, 3, 16, 16)

    def fixed():
        torch.manual_seed(3)  # the same masks at every step
        return [x]

    optimizer = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = m(fixed())["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


# ---------- every method ----------


@pytest.mark.parametrize("name", list(SMALL))
def test_a_few_sgd_steps_lower_the_loss(name):
    torch.manual_seed(0)
    losses = steps_lower_the_loss(small(name), (lambda: views(local=2)) if name in MULTI_CROP else views)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", sorted(set(SMALL) - MULTI_CROP))
def test_two_view_methods_reject_other_view_counts(name):
    with pytest.raises(ValueError, match="takes 2 views, got 3"):
        small(name)(views(3))


@pytest.mark.parametrize("name", list(SMALL))
def test_registered_and_listed(name):
    assert name in vs.list_methods()
    method_cls = vs.methods.METHODS.get(name)
    aug = vs.augment.create(method_cls.augmentation, image_size=16)
    assert aug.num_views == method_cls.num_views


@pytest.mark.parametrize("recipe", [f"{m}{s}" for m in [*SMALL, "mae"] for s in ("", "_imagenet")])
def test_recipes_follow_the_simclr_schema_and_name_valid_hparams(recipe):
    from visionssl.engine.config import load_config

    config = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
    assert set(config) == set(yaml.safe_load((CONFIGS / "simclr.yaml").read_text()))
    load_config(config=str(CONFIGS / f"{recipe}.yaml"))
    method = dict(config["method"])
    assert method.pop("name") == recipe.removesuffix("_imagenet")
    assert set(method) <= set(method_hparams(recipe.removesuffix("_imagenet")))
    assert config["optim"]["name"] in OPTIMIZERS


# ---------- through the trainer ----------

TRAINER = {
    "swav": [
        "backbone.name=resnet10t_cifar",
        "method.proj_hidden_dim=32",
        "method.proj_dim=16",
        "method.num_prototypes=10",
        "method.queue_size=16",
        "method.queue_start_epoch=1",
        "method.freeze_prototypes_epochs=1",
        "augment.kwargs={num_local: 2, local_size: 8}",
    ],
    "dino": [
        "backbone.kwargs={img_size: 16, patch_size: 4, dynamic_img_size: true, depth: 1}",
        "method.out_dim=16",
        "method.hidden_dim=32",
        "method.bottleneck_dim=8",
        "method.warmup_teacher_temp_epochs=2",
        "augment.kwargs={num_local: 2, local_size: 8}",
    ],
    "mae": [
        "backbone.kwargs={img_size: 16, patch_size: 4, depth: 1}",
        "method.decoder_dim=16",
        "method.decoder_depth=1",
        "method.decoder_heads=2",
    ],
}


@pytest.mark.parametrize("name", list(TRAINER))
def test_two_epochs_through_the_trainer_with_checkpoints(tmp_path, name):
    from visionssl.engine import Trainer, load_config

    overrides = [
        "data.name=synthetic:32",
        "data.image_size=20",
        "augment.image_size=16",
        "optim.batch_size=16",
        "optim.warmup_epochs=0",
        "train.epochs=2",
        "train.progress=false",
        "train.knn_every=-1",
        "train.precision=fp32",
        "train.num_threads=1",
        f"out={tmp_path}",
        *TRAINER[name],
    ]
    trainer = Trainer(load_config(name, overrides=overrides))
    result = trainer.fit()
    assert result["step"] == 4 and int(trainer.method.iteration if hasattr(trainer.method, "iteration") else 4) == 4
    assert torch.isfinite(torch.tensor(result["train/loss"]))
    if name == "swav":
        assert trainer.method.steps_per_epoch == 2 and trainer.method.queue[:, :8].abs().sum() > 0  # filled in epoch 1
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4


def test_visionssl_methods_lists_the_new_methods(capsys):
    from visionssl.cli import main

    assert main(["methods"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"barlow_twins", "mocov3", "swav", "dino", "mae"} <= listed


@pytest.mark.parametrize("name", [*SMALL, "mae"])
def test_bf16_autocast_keeps_the_loss_in_float32(name):
    m = small_mae() if name == "mae" else small(name)
    v = [torch.randn(4, 3, 16, 16)] if name == "mae" else views(batch=4, local=2 if name in MULTI_CROP else 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(v)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_streaming_refuses_the_multicrop_preset_with_one_line():
    from visionssl.augment.preset_split import split_preset

    with pytest.raises(ValueError, match="data.stream cannot split the MultiCrop preset"):
        split_preset(vs.augment.create("multicrop", image_size=16, num_local=2))


def test_swav_warns_when_prototypes_outnumber_the_embeddings_sinkhorn_shares_out():
    import warnings

    from visionssl.engine import load_config

    base = ["optim.batch_size=32", "method.queue_size=1024"]
    with pytest.warns(UserWarning, match=r"num_prototypes=3000 is more than the 1056 embeddings"):
        load_config("swav", overrides=[*base, "method.num_prototypes=3000"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config("swav", overrides=[*base, "method.num_prototypes=256"])
