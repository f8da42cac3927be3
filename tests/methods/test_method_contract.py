"""The contract every registered method keeps (``vs.list_methods()``, plugins included): built with small
hyperparameters on a tiny backbone, it runs on its own augmentation preset's views of tiny uint8 images,
gives a finite 0-d loss whose backward reaches the backbone, and a state-dict round trip into a fresh
instance gives the same loss under the same seed.

A new method needs one entry in ``SMALL`` below; without it the contract test fails and says so.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import visionssl as vs

from conftest import TinyNet


def _deepcluster_inputs(method, batch):
    """DeepCluster learns from pseudo-labels looked up by dataset index: give it a clustering first."""
    method.set_pseudo_labels(torch.arange(2 * batch) % method.num_clusters)
    return {"indices": torch.arange(batch)}


def _tiny_vit():
    return vs.create_backbone("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)


@dataclass
class Small:
    hparams: dict = field(default_factory=dict)
    image_size: int = 16  # the preset's image_size (uint8 images are 4 px larger)
    inputs: Callable | None = None  # (method, batch) -> extra forward kwargs, after any setup the method needs
    backbone: Callable = TinyNet  # () -> a tiny backbone the method accepts


SMALL = {
    "simclr": Small({"proj_hidden_dim": 32, "proj_dim": 16}),
    "moco": Small({"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 32}),
    "byol": Small({"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}),
    "simsiam": Small({"proj_hidden_dim": 32, "proj_dim": 32, "pred_hidden_dim": 16}),
    "vicreg": Small({"expander_dim": 32}),
    "rotation": Small(),
    "context": Small({"patch_size": 8, "gap": 3, "jitter": 1, "head_hidden_dim": 32}, image_size=32),
    "jigsaw": Small({"num_permutations": 10, "tile_dim": 16, "head_hidden_dim": 32}, image_size=32),
    "deepcluster": Small({"num_clusters": 4, "pca_dim": 4}, inputs=_deepcluster_inputs),
    "barlow_twins": Small({"proj_dim": 32}),
    "mocov3": Small({"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}),
    "swav": Small({"proj_hidden_dim": 32, "proj_dim": 16, "num_prototypes": 12, "freeze_prototypes_epochs": 0}),
    "dino": Small(
        {
            "out_dim": 16,
            "hidden_dim": 32,
            "bottleneck_dim": 8,
            "freeze_last_layer_epochs": 0,
            "warmup_teacher_temp_epochs": 0,
        }
    ),
    "mae": Small({"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}, backbone=_tiny_vit),
}
BATCH = 4


def small(name):
    entry = SMALL.get(name)
    if entry is None:
        pytest.fail(
            f"method {name!r} has no entry in SMALL in tests/methods/test_method_contract.py: add its small "
            "hyperparameters there (every registered method must pass the contract test)"
        )
    return entry


def build(name, seed):
    torch.manual_seed(seed)
    entry = small(name)
    return vs.create_method(name, backbone=entry.backbone(), **entry.hparams)


def test_every_entry_names_a_registered_method():
    stale = sorted(set(SMALL) - set(vs.list_methods()))
    assert not stale, f"SMALL has entries for methods that are not registered: {stale}"


def test_a_method_without_an_entry_fails_with_a_message():
    with pytest.raises(pytest.fail.Exception, match="'my_method' has no entry in SMALL"):
        small("my_method")


@pytest.mark.parametrize("name", vs.list_methods())
def test_method_contract(name, private_home):
    entry = small(name)
    method = build(name, seed=1)
    cls = type(method)
    images = torch.randint(0, 256, (BATCH, 3, entry.image_size + 4, entry.image_size + 4), dtype=torch.uint8)
    views = vs.augment.create(cls.augmentation, image_size=entry.image_size)(images)
    assert len(views) == cls.num_views, (
        f"preset {cls.augmentation!r} made {len(views)} views, {name} wants {cls.num_views}"
    )
    assert views[0].shape == (BATCH, 3, entry.image_size, entry.image_size)
    assert all(v.shape[:2] == (BATCH, 3) for v in views)  # multi-crop: smaller local views
    kwargs = entry.inputs(method, BATCH) if entry.inputs else {}

    # state-dict round trip: a fresh instance (other initial weights) loaded with the state gives the same loss
    state = copy.deepcopy(method.state_dict())
    fresh = build(name, seed=2)
    assert any(not torch.equal(a, b) for a, b in zip(state.values(), fresh.state_dict().values()))
    fresh.load_state_dict(state)
    torch.manual_seed(3)
    out = method(views, **kwargs)
    torch.manual_seed(3)
    again = fresh(views, **kwargs)
    torch.testing.assert_close(again["loss"], out["loss"], rtol=0, atol=1e-6)

    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: backbone grads missing"
    assert any(g.abs().sum() > 0 for g in grads), f"{name}: backbone grads are all zero"


def test_the_round_trip_catches_state_kept_outside_the_state_dict(monkeypatch, private_home):
    from visionssl.methods import METHODS, SSLMethod

    class Leaky(SSLMethod):
        """Its head is a plain tensor attribute: not saved, so a loaded copy keeps its own random head."""

        num_views = 2

        def __init__(self, backbone="resnet18", backbone_kwargs=None):
            super().__init__(backbone, backbone_kwargs)
            self.head = torch.randn(self.num_features, 4)

        def forward(self, views):
            h = self.backbone(torch.cat(views))
            z1, z2 = (h @ self.head).chunk(2)
            return {"loss": vs.losses.nt_xent(z1, z2, 0.5), "embedding": h.detach()}

    monkeypatch.setattr(METHODS, "_factories", {**METHODS._factories, "leaky": Leaky})
    monkeypatch.setitem(SMALL, "leaky", Small())
    with pytest.raises(AssertionError, match="Scalars are not close"):
        test_method_contract("leaky", private_home)


MOMENTUM_METHODS = {"moco": "momentum_", "mocov3": "momentum_", "byol": "target_", "dino": "teacher_"}


@pytest.mark.parametrize("name", sorted(MOMENTUM_METHODS))
def test_momentum_copies_are_one_target_with_one_schedule(name):
    """MoCo's key encoder, BYOL's target, DINO's teacher: one ``MomentumTarget`` at ``method.target``, whose
    copies mirror the online modules of the same names, scheduled by ``momentum`` / ``final_momentum``."""
    from visionssl.methods import method_hparams
    from visionssl.methods.momentum import MomentumTarget

    method = build(name, seed=0)
    assert isinstance(method.target, MomentumTarget)
    assert {"momentum", "final_momentum"} <= set(method_hparams(name))
    for child, copy_ in method.target.named_children():
        online = method.get_submodule(child)
        assert [n for n, _ in copy_.named_parameters()] == [n for n, _ in online.named_parameters()]
        assert not any(p.requires_grad for p in copy_.parameters())
    assert not [k for k in method.state_dict() if k.startswith(("momentum_", "teacher_", "target_"))]


@pytest.mark.parametrize("name, old", sorted(MOMENTUM_METHODS.items()))
def test_a_checkpoint_with_the_old_momentum_keys_still_loads(name, old):
    """State dicts written before ``MomentumTarget`` named the copies ``<old>backbone.*``; they load unchanged."""
    state = build(name, seed=1).state_dict()
    legacy = {(f"{old}{k[len('target.') :]}" if k.startswith("target.") else k): v for k, v in state.items()}
    assert any(k.startswith(old) for k in legacy)
    fresh = build(name, seed=2)
    fresh.load_state_dict(legacy)  # strict: no missing and no unexpected keys
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())


def test_the_contract_has_its_defaults_on_the_base_class():
    """What the config reader and the trainer read of a method is declared on ``SSLMethod`` with a default."""
    from visionssl.methods import SSLMethod, method_class

    assert SSLMethod.hparam_ranges == {} and SSLMethod.sample_labels is None and SSLMethod.sample_weights is None
    assert SSLMethod.needs_indices is False and SSLMethod.check_config({}, None) is None

    def factory(**kwargs):  # a plugin may register a factory function: the base class's defaults apply
        return vs.create_method("simclr", **kwargs)

    from visionssl.methods import METHODS

    METHODS._factories["_factory_method"] = factory
    try:
        assert method_class("_factory_method") is SSLMethod and method_class("swav").__name__ == "SwAV"
    finally:
        del METHODS._factories["_factory_method"]


@pytest.mark.parametrize(
    "method, key, value",
    [
        ("context", "color", "gray"),
        ("deepcluster", "classifier", "linear"),
        ("jigsaw", "tile_norm", "image"),
        ("jigsaw", "permutation_selection", "random"),
        ("mae", "encoder_init", "xavier"),
    ],
)
def test_a_text_hyperparameter_outside_its_choices_is_a_config_error_naming_them(method, key, value):
    from visionssl.engine import load_config
    from visionssl.engine.config_checks import validate
    from visionssl.errors import ConfigError
    from visionssl.methods import method_class

    choices = method_class(method).hparam_choices[key]
    with pytest.raises(ConfigError, match=f"method.{key}='{value}': {method} takes one of {', '.join(choices)}"):
        validate(load_config(method, overrides=[f"method.{key}={value}"]))
    validate(load_config(method, overrides=[f"method.{key}={choices[-1]}"]))  # every listed value is accepted
