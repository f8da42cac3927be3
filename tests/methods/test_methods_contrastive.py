"""MoCo v2, BYOL, SimSiam, VICReg: EMA and queue mechanics, gradients, backbones, presets and recipes."""

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import visionssl as vs
from visionssl.engine.optim import OPTIMIZERS, create_optimizer, set_lr
from visionssl.methods import method_hparams
from visionssl.methods.momentum import copy_frozen, cosine_momentum, ema_update_

from conftest import TinyNet

SMALL_HEADS = {
    "moco": dict(proj_hidden_dim=64, proj_dim=32, queue_size=64),
    "byol": dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64),
    "simsiam": dict(proj_hidden_dim=64, proj_dim=64, pred_hidden_dim=16),
    "vicreg": dict(expander_dim=64),
}
METHODS = list(SMALL_HEADS)
TARGET_PREFIXES = ("target.",)


def tiny_backbone():
    """The mechanics tests need BatchNorm and convolutions, not depth."""
    return TinyNet(width=16, stride=2)


def linear_backbone(features):
    """A backbone of ``features`` outputs, for the head-width rules."""
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, features))
    net.num_features = features
    return net


def small(name, backbone=None, backbone_kwargs=None, **hparams):
    backbone = tiny_backbone() if backbone is None else backbone
    hparams = {**SMALL_HEADS[name], **hparams}
    return vs.create_method(name, backbone=backbone, backbone_kwargs=backbone_kwargs, **hparams)


def two_views(batch=8, size=16):
    return [torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)]


def perturb_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def target_parameters(method):
    return {n: p for n, p in method.named_parameters() if n.startswith(TARGET_PREFIXES)}


# ---------- EMA helpers ----------


def test_ema_update_gives_the_exact_expected_weights():
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[4.0, -8.0], [1.0, 0.0]]))
        online.bias.copy_(torch.tensor([2.0, 6.0]))
        target.weight.copy_(torch.tensor([[0.0, 8.0], [-3.0, 2.0]]))
        target.bias.copy_(torch.tensor([-2.0, 2.0]))
    ema_update_(target, online, momentum=0.75)  # 0.75 t + 0.25 o, exact in binary floating point
    assert torch.equal(target.weight, torch.tensor([[1.0, 4.0], [-2.0, 1.5]]))
    assert torch.equal(target.bias, torch.tensor([-1.0, 3.0]))
    assert torch.equal(online.weight, torch.tensor([[4.0, -8.0], [1.0, 0.0]]))  # the online net is untouched


def test_ema_update_random_weights_and_extremes():
    online, target = nn.Linear(5, 3), nn.Linear(5, 3)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, online, momentum=0.99)
    for t, t0, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.99 * t0 + 0.01 * o, rtol=0, atol=1e-7)
    ema_update_(target, online, momentum=0.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema_update_(target, online, momentum=1.5)
    with pytest.raises(ValueError, match="target and online networks differ"):
        ema_update_(target, nn.Sequential(online, nn.Linear(3, 1)), momentum=0.5)


def test_copy_frozen_is_an_independent_gradient_free_copy():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = copy_frozen(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for t, o in zip(target.parameters(), online.parameters()):
        assert torch.equal(t, o) and t.data_ptr() != o.data_ptr()


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 1000) == pytest.approx(0.996, abs=1e-12)
    assert cosine_momentum(1000, 1000) == 1.0
    assert cosine_momentum(500, 1000) == pytest.approx(0.998)
    assert cosine_momentum(2000, 1000) == 1.0  # clamped
    values = [cosine_momentum(s, 50, 0.99, 0.999) for s in range(51)]
    assert values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(0.999)
    assert all(a <= b for a, b in zip(values, values[1:]))


# ---------- BYOL ----------


def test_byol_target_momentum_hits_its_start_and_end():
    m = small("byol")
    assert m.target.momentum_at(1, 100) == pytest.approx(0.996, abs=1e-12)
    assert m.target.momentum_at(100, 100) == 1.0
    perturb_(m.backbone)
    perturb_(m.projector)
    pairs = [(m.target.backbone, m.backbone), (m.target.projector, m.projector)]
    before = [[p.detach().clone() for p in t.parameters()] for t, _ in pairs]
    m.on_step_end(1, 100)  # first update: tau = 0.996
    for (target, online), old in zip(pairs, before):
        for t, t0, o in zip(target.parameters(), old, online.parameters()):
            torch.testing.assert_close(t, 0.996 * t0 + 0.004 * o, rtol=1e-6, atol=1e-6)
    after_first = [p.detach().clone() for p in target_parameters(m).values()]
    m.on_step_end(100, 100)  # last update: tau = 1, the target stays where it is
    assert all(torch.equal(a, b) for a, b in zip(after_first, target_parameters(m).values()))


def test_byol_hidden_widths_of_none_scale_with_the_backbone():
    def widths(m):
        return m.projector[0].out_features, m.predictor[0].out_features

    assert widths(vs.create_method("byol", backbone=TinyNet(), proj_hidden_dim=None, pred_hidden_dim=None)) == (
        4 * TinyNet().num_features,
        4 * TinyNet().num_features,
    )
    wide = vs.create_method(
        "byol", backbone=TinyNet(width=1024), proj_hidden_dim=None, pred_hidden_dim=None, proj_dim=8
    )
    assert widths(wide) == (4096, 4096)  # never past the paper's
    assert widths(vs.create_method("byol", backbone=TinyNet(), proj_hidden_dim=24, pred_hidden_dim=40)) == (24, 40)
    cfg = yaml.safe_load((Path(vs.__file__).parent / "configs" / "byol.yaml").read_text())["method"]
    assert cfg["proj_hidden_dim"] is None and cfg["pred_hidden_dim"] is None  # the small recipe scales


def test_byol_loss_is_the_papers_symmetrised_regression_loss():
    m = small("byol")
    views = two_views()
    out = m(views)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in m.backbone.named_parameters()}
    m.zero_grad()

    def regression(p, z):  # ||p/|p| - z/|z|||^2 with z a constant
        return (F.normalize(p, dim=1) - F.normalize(z.detach(), dim=1)).pow(2).sum(1).mean()

    p1, p2 = (m.predictor(m.projector(m.backbone(x))) for x in views)
    with torch.no_grad():
        t1, t2 = (m.target.projector(m.target.backbone(x)) for x in views)
    expected = regression(p1, t2) + regression(p2, t1)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    expected.backward()
    for n, p in m.backbone.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)


# ---------- MoCo ----------


def chronological(moco):
    """The queue read from its oldest entry to its newest."""
    return moco.queue.roll(-int(moco.queue_ptr), dims=0)


@pytest.mark.parametrize("batch_sizes", [[4, 4, 4, 4, 4, 3], [10, 10, 10], [13], [3, 9, 1, 7]])
def test_moco_queue_holds_exactly_the_latest_keys_in_order(batch_sizes):
    m = small("moco", queue_size=10, proj_dim=3)
    written = []
    for n in batch_sizes:
        keys = F.normalize(torch.randn(n, 3), dim=1)
        m.enqueue(keys)
        written.append(keys)
    written = torch.cat(written)
    assert len(written) > 10
    assert torch.equal(chronological(m), written[-10:])
    assert int(m.queue_ptr) == (len(written) % 10 if batch_sizes != [13] else 0)


def test_moco_queue_starts_as_random_unit_vectors():
    m = small("moco", queue_size=50, proj_dim=16)
    assert m.queue.shape == (50, 16) and int(m.queue_ptr) == 0 and not m.queue.requires_grad
    torch.testing.assert_close(m.queue.norm(dim=1), torch.ones(50))
    assert float((m.queue @ m.queue.T - torch.eye(50)).abs().max()) < 0.99  # not a constant vector


def test_moco_forward_uses_the_queue_before_enqueuing_its_keys():
    m = small("moco", queue_size=20)
    m.queue_ptr.fill_(17)  # the write must wrap around the end
    m.queue_filled.fill_(True)  # a queue that holds keys (a fresh one: see the test below)
    queue_before = m.queue.clone()
    views = two_views(batch=6)
    out = m(views)
    out["loss"].backward()
    with torch.no_grad():
        q = F.normalize(m.projector(m.backbone(views[0])), dim=1)
        k = F.normalize(m.target.projector(m.target.backbone(views[1])), dim=1)
    torch.testing.assert_close(out["loss"], vs.losses.infonce_queue(q, k, queue_before, 0.2), rtol=1e-5, atol=1e-6)
    rows = torch.tensor([17, 18, 19, 0, 1, 2])
    torch.testing.assert_close(m.queue[rows], k, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(m.queue[untouched], queue_before[untouched])
    assert int(m.queue_ptr) == 3
    # no gradient reaches the key encoder; the query encoder gets one
    assert all(p.grad is None for p in target_parameters(m).values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())


def test_moco_eval_mode_does_not_enqueue():
    m = small("moco").eval()
    queue, ptr = m.queue.clone(), int(m.queue_ptr)
    with torch.no_grad():
        m(two_views(batch=4))
    assert torch.equal(m.queue, queue) and int(m.queue_ptr) == ptr


def test_moco_symmetric_averages_both_directions():
    m = small("moco", symmetric=True)
    m.queue_filled.fill_(True)
    queue = m.queue.clone()
    views = two_views(batch=4)
    loss = m(views)["loss"]
    with torch.no_grad():
        q1, q2 = (F.normalize(m.projector(m.backbone(x)), dim=1) for x in views)
        k1, k2 = (F.normalize(m.target.projector(m.target.backbone(x)), dim=1) for x in views)
    expected = (vs.losses.infonce_queue(q1, k2, queue) + vs.losses.infonce_queue(q2, k1, queue)) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(chronological(m)[-4:], k2)  # the queue receives the keys of view 2


def test_moco_never_contrasts_with_the_random_rows_a_queue_starts_from():
    m = small("moco", queue_size=32)
    first, second = two_views(batch=4), two_views(batch=4)

    def queries_and_keys(views):
        with torch.no_grad():
            q = F.normalize(m.projector(m.backbone(views[0])), dim=1)
            k = F.normalize(m.target.projector(m.target.backbone(views[1])), dim=1)
        return q, k

    q, k = queries_and_keys(first)
    loss = m(first)["loss"]  # nothing queued yet: the negatives are the batch's other keys, worked by hand
    logits = torch.cat([(q * k).sum(1, keepdim=True), (q @ k.T)[~torch.eye(4, dtype=torch.bool)].view(4, 3)], 1)
    torch.testing.assert_close(
        loss, F.cross_entropy(logits / 0.2, torch.zeros(4, dtype=torch.long)), rtol=1e-5, atol=1e-6
    )
    assert m.queue_filled.sum() == 4 and m.queue_filled[:4].all()
    queue = m.queue.clone()
    q, k = queries_and_keys(second)
    loss = m(second)["loss"]  # then only the 4 queued keys, not the 28 random rows nor the batch
    torch.testing.assert_close(loss, vs.losses.infonce_queue(q, k, queue[:4], 0.2), rtol=1e-5, atol=1e-6)


def test_moco_checkpoints_written_before_the_fill_mask_resume_with_a_full_queue():
    m = small("moco", queue_size=16)
    old = {k: v for k, v in m.state_dict().items() if k != "queue_filled"}
    fresh = small("moco", queue_size=16)
    fresh.load_state_dict(old)
    assert fresh.queue_filled.all()


@pytest.mark.parametrize("final, expected_first, expected_last", [(None, 0.9, 0.9), (0.99, 0.9, 0.99)])
def test_moco_key_encoder_momentum(final, expected_first, expected_last):
    m = small("moco", momentum=0.9, final_momentum=final)
    for step, tau in [(1, expected_first), (10, expected_last)]:
        perturb_(m.backbone)
        old = [p.detach().clone() for p in m.target.backbone.parameters()]
        m.on_step_end(step, 10)
        for t, t0, o in zip(m.target.backbone.parameters(), old, m.backbone.parameters()):
            torch.testing.assert_close(t, tau * t0 + (1 - tau) * o, rtol=1e-6, atol=1e-6)


def test_moco_warns_when_the_queue_is_not_smaller_than_the_data():
    m = small("moco", queue_size=64)
    with pytest.warns(UserWarning, match="queue_size=64 is not smaller than the training set"):
        m.on_train_start(SimpleNamespace(train_set=range(50)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.on_train_start(SimpleNamespace(train_set=range(5000)))


def test_moco_rejects_an_empty_queue():
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        small("moco", queue_size=0)


# ---------- SimSiam ----------


def test_simsiam_stop_gradient_matches_the_paper():
    m = small("simsiam")
    views = two_views()
    out = m(views)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    z1, z2 = (m.projector(m.backbone(x)) for x in views)
    p1, p2 = m.predictor(z1), m.predictor(z2)
    expected = -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    expected.backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fixed", [True, False])
def test_simsiam_predictor_param_groups(fixed):
    m = small("simsiam", fixed_predictor_lr=fixed)
    groups = m.param_groups(weight_decay=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters() if p.requires_grad)  # each once
    predictor = {id(p) for p in m.predictor.parameters()}
    fixed_ids = {id(p) for g in groups if g.get("fixed_lr") for p in g["params"]}
    assert fixed_ids == (predictor if fixed else set())
    optimizer = create_optimizer(groups, "sgd", lr=0.5)
    set_lr(optimizer, 0.1)
    for g in optimizer.param_groups:
        in_predictor = any(id(p) in predictor for p in g["params"])
        assert g["lr"] == pytest.approx(0.5 if fixed and in_predictor else 0.05)


# ---------- VICReg ----------


def test_vicreg_outputs_the_loss_and_its_terms():
    m = small("vicreg")
    views = two_views()
    out = m(views)
    z1, z2 = (m.expander(m.backbone(x)) for x in views)
    loss, terms = vs.losses.vicreg(z1, z2, return_terms=True)
    torch.testing.assert_close(out["loss"], loss, rtol=1e-5, atol=1e-5)
    for name, value in terms.items():
        logged = out[f"vicreg/{name}"]
        assert logged.ndim == 0 and not logged.requires_grad
        torch.testing.assert_close(logged, value.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "features, kwargs, width",
    [(32, {}, 128), (512, {}, 2048), (2049, {}, 8192), (32, {"expander_dim": 96}, 96)],
)
def test_vicreg_expander_width(features, kwargs, width):
    """None: 4 x the backbone's features, at most the paper's 8192 (``head_width``), whatever the image size."""
    m = vs.create_method("vicreg", backbone=linear_backbone(features), expander_layers=1, **kwargs)
    assert m.expander[-1].out_features == width


# ---------- every method ----------

BACKBONES = [
    ("resnet10t_cifar", None, 16),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32),
]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("backbone, backbone_kwargs, size", BACKBONES, ids=["resnet", "vit"])
def test_forward_backward_on_any_backbone(name, backbone, backbone_kwargs, size):
    m = small(name, backbone=backbone, backbone_kwargs=backbone_kwargs)
    out = m(two_views(batch=2, size=size))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["embedding"].shape == (2, m.num_features) and not out["embedding"].requires_grad
    out["loss"].backward()
    assert all(p.grad is not None for p in m.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in target_parameters(m).values())
    m.on_step_end(1, 10)
    # the optimizer only ever sees trainable parameters
    grouped = {id(p) for g in m.param_groups(1e-4) for p in g["params"]}
    assert grouped.isdisjoint(id(p) for p in target_parameters(m).values())


@pytest.mark.parametrize("name", METHODS)
def test_a_few_sgd_steps_lower_the_loss(name):
    m = small(name)
    views = two_views(batch=16)
    optimizer = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    # MoCo: a fixed batch would fill the queue with its own keys; keep the first (random) negatives
    queue_state = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("queue")}

    def loss():
        m.load_state_dict(queue_state, strict=False)
        return m(views)["loss"]

    first = float(loss().detach())
    for step in range(1, 9):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        m.on_step_end(step, 8)
    assert float(loss().detach()) < first


@pytest.mark.parametrize("name", METHODS)
def test_bf16_autocast_keeps_the_loss_and_the_queue_in_float32(name):
    m = small(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(two_views(batch=4))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    m.on_step_end(1, 10)
    if name == "moco":
        assert m.queue.dtype == torch.float32 and int(m.queue_ptr) == 4


@pytest.mark.parametrize("name", METHODS)
def test_rejects_a_wrong_number_of_views(name):
    with pytest.raises(ValueError, match="takes 2 views, got 3"):
        small(name)(two_views(batch=2) + [torch.randn(2, 3, 16, 16)])


# ---------- augmentation presets ----------


def _op(pipeline, kind):
    found = [m for m in pipeline.modules() if type(m).__name__ == kind]  # the fused blur sits inside the crop
    return found[0] if found else None


def _colour(pipeline):
    """(brightness, contrast, saturation, hue, jitter p, grayscale p) of a view, whichever the backend."""
    fused = _op(pipeline, "ColorJitterGrayscale")
    if fused is not None:
        return (fused.brightness, fused.contrast, fused.saturation, fused.hue, fused.p, fused.grayscale_p)
    jitter, gray = _op(pipeline, "ColorJitter"), _op(pipeline, "RandomGrayscale")
    return (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue, jitter.p, gray.p)


def _p(pipeline, kind):
    op = _op(pipeline, kind)
    return 0.0 if op is None else op.p


BACKENDS = ["fused", "kornia"]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("image_size", [16, 96])
def test_each_method_has_its_preset(name, image_size):
    method_cls = vs.methods.METHODS.get(name)
    aug = vs.augment.create(method_cls.augmentation, image_size=image_size)
    assert aug.num_views == method_cls.num_views == 2
    views = aug(torch.randint(0, 256, (3, 1, 40, 40), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(3, 3, image_size, image_size)] * 2
    blur = [_p(p, "RandomGaussianBlur") for p in aug.pipelines]
    assert all(b == 0 for b in blur) if image_size < 64 else all(b > 0 for b in blur)


@pytest.mark.parametrize("name", ["byol", "vicreg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_asymmetric_presets(name, backend):
    view1, view2 = vs.augment.create(name, image_size=96, backend=backend).pipelines
    assert (_p(view1, "RandomGaussianBlur"), _p(view1, "RandomSolarize")) == (1.0, 0.0)
    assert (_p(view2, "RandomGaussianBlur"), _p(view2, "RandomSolarize")) == (0.1, 0.2)
    assert _colour(view1) == _colour(view2) == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2)


def test_asymmetric_preset_probabilities_per_view():
    view1, view2 = vs.augment.create("byol", image_size=32, blur_p=0.3, solarize_p=(0.1, 0.4)).pipelines
    assert [_p(v, "RandomGaussianBlur") for v in (view1, view2)] == [0.3, 0.3]
    assert [_p(v, "RandomSolarize") for v in (view1, view2)] == [0.1, 0.4]
    with pytest.raises(ValueError, match=r"solarize_p takes one probability per view \(2 values"):
        vs.augment.create("vicreg", image_size=32, solarize_p=(0.1, 0.2, 0.3))


@pytest.mark.parametrize("name", ["moco", "simsiam"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_moco_v2_presets(name, backend):
    for view in vs.augment.create(name, image_size=224, backend=backend).pipelines:
        assert _colour(view) == (0.4, 0.4, 0.4, 0.1, 0.8, 0.2)
        assert (_p(view, "RandomGaussianBlur"), _p(view, "RandomSolarize")) == (0.5, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_jitter_view_jitter_option_keeps_the_default(backend):
    from visionssl.augment.crop_jitter import crop_jitter_view

    default = _colour(crop_jitter_view(32, jitter_strength=0.5, backend=backend))
    explicit = _colour(crop_jitter_view(32, jitter=(0.4, 0.4, 0.2, 0.1), backend=backend))
    assert default == (0.4, 0.4, 0.4, 0.1, 0.8, 0.2)
    assert explicit == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2)


# ---------- recipes ----------

CONFIGS = Path(vs.__file__).parent / "configs"


@pytest.mark.parametrize("recipe", [f"{m}{s}" for m in METHODS for s in ("", "_imagenet")])
def test_recipes_follow_the_simclr_schema_and_name_valid_hparams(recipe):
    from visionssl.engine.config import load_config

    config = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
    schema = yaml.safe_load((CONFIGS / "simclr.yaml").read_text())
    assert set(config) == set(schema)
    load_config(config=str(CONFIGS / f"{recipe}.yaml"))  # every key and type checked against the config schema
    method = dict(config["method"])
    name = method.pop("name")
    assert name == recipe.removesuffix("_imagenet")
    assert set(method) <= set(method_hparams(name))
    assert config["optim"]["name"] in OPTIMIZERS
    assert config["backbone"]["name"] in vs.list_backbones(config["backbone"]["name"])
