"""Rotation feature decoupling (Feng et al., 2019): the instance softmax, the memory bank, the method, a run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionssl.engine import Trainer, load_checkpoint, load_config
from visionssl.losses import instance_softmax, update_memory_bank
from visionssl.methods.rotation import RotationPrediction


class TinyNet(nn.Sequential):
    def __init__(self, width: int = 8):
        super().__init__(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.num_features = 2 * width


# ------------------------------------------------------------------ pure functions
def test_instance_softmax_worked_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    z = torch.tensor([[2.0, 0.0]])  # normalised to (1, 0): similarities 1, 0, -1
    # -log(e^(1/T) / (e^(1/T) + e^0 + e^(-1/T))) at T = 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert float(instance_softmax(z, bank, torch.tensor([0]), temperature=0.5)) == pytest.approx(expected, rel=1e-6)
    # the target is the image's own row: pointing at row 1 instead costs -log(1 / (...))
    expected_1 = -math.log(1 / (math.exp(2) + 1 + math.exp(-2)))
    assert float(instance_softmax(z, bank, torch.tensor([1]), temperature=0.5)) == pytest.approx(expected_1, rel=1e-6)


def test_instance_softmax_gradient_reaches_z_only_and_rejects_bad_shapes():
    bank = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    z = torch.randn(2, 4, requires_grad=True)
    instance_softmax(z, bank, torch.tensor([0, 5])).backward()
    assert z.grad.abs().sum() > 0 and bank.grad is None
    with pytest.raises(ValueError, match="same D"):
        instance_softmax(torch.randn(2, 3), bank, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="indices must be"):
        instance_softmax(z, bank, torch.tensor([0]))
    with pytest.raises(ValueError, match="temperature"):
        instance_softmax(z, bank, torch.tensor([0, 1]), temperature=0)


def test_memory_bank_update_mixes_renormalises_and_leaves_other_rows():
    bank = F.normalize(torch.randn(5, 3), dim=1)
    before = bank.clone()
    z = torch.tensor([[0.0, 0.0, 3.0], [4.0, 0.0, 0.0]])
    update_memory_bank(bank, torch.tensor([1, 3]), z, momentum=0.25)
    for row, new in ((1, torch.tensor([0.0, 0.0, 1.0])), (3, torch.tensor([1.0, 0.0, 0.0]))):
        assert torch.allclose(bank[row], F.normalize(0.25 * before[row] + 0.75 * new, dim=0), atol=1e-6)
    assert torch.equal(bank[[0, 2, 4]], before[[0, 2, 4]])
    kept = bank.clone()
    update_memory_bank(bank, torch.tensor([0, 2]), torch.tensor([[float("nan"), 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(bank[0], kept[0]) and not torch.equal(bank[2], kept[2])  # a NaN row is not written
    with pytest.raises(ValueError, match="momentum"):
        update_memory_bank(bank, torch.tensor([0]), z[:1], momentum=1.0)


# ------------------------------------------------------------------------ the method
def decoupled(**kwargs) -> RotationPrediction:
    torch.manual_seed(0)
    method = RotationPrediction(backbone=TinyNet(), instance_dim=8, **kwargs)
    method.init_memory_bank(10)
    return method


def test_loss_is_rotation_ce_plus_weighted_invariance_and_instance_terms():
    method = decoupled(instance_weight=0.5, invariance_weight=2.0, instance_temperature=0.2).eval()
    x, idx = torch.randn(3, 3, 16, 16), torch.tensor([7, 0, 4])
    bank = method.memory_bank.clone()
    with torch.no_grad():
        out = method([x], indices=idx)
        feats = [method.backbone(torch.rot90(x, k, (-2, -1))) for k in range(4)]
        rotation = F.cross_entropy(method.classifier(torch.cat(feats)), torch.arange(4).repeat_interleave(3))
        z = torch.stack([F.normalize(method.instance_head(f), dim=1) for f in feats])  # (4, B, D)
        mean = z.mean(0)
        invariance = ((z - mean) ** 2).sum(2).mean()
        logits = F.normalize(mean, dim=1) @ bank.T / 0.2
        instance = F.cross_entropy(logits, idx)
    assert float(out["rotation/invariance_loss"]) == pytest.approx(float(invariance), rel=1e-5)
    assert float(out["rotation/instance_loss"]) == pytest.approx(float(instance), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(rotation + 2.0 * invariance + 0.5 * instance), rel=1e-5)
    assert torch.equal(method.memory_bank, bank)  # written only after the step
    method.on_step_end(1, 1)
    expected = F.normalize(0.5 * bank[idx] + 0.5 * F.normalize(mean, dim=1), dim=1)
    assert torch.allclose(method.memory_bank[idx], expected, atol=1e-6)
    assert torch.equal(method.memory_bank[[1, 2, 3, 5, 6, 8, 9]], bank[[1, 2, 3, 5, 6, 8, 9]])


def test_gradients_reach_backbone_and_both_heads_and_the_bank_is_no_parameter():
    method = decoupled()
    out = method([torch.randn(4, 3, 16, 16)], indices=torch.arange(4))
    out["loss"].backward()
    assert method.instance_head.weight.grad.abs().sum() > 0 and method.classifier[0].weight.grad.abs().sum() > 0
    assert method.backbone[0].weight.grad.abs().sum() > 0
    assert "memory_bank" not in dict(method.named_parameters())


def test_plain_rotnet_has_no_bank_and_ignores_indices():
    method = RotationPrediction(backbone=TinyNet())
    assert method.instance_head is None and method.memory_bank.numel() == 0
    out = method([torch.randn(2, 3, 16, 16)], indices=torch.tensor([0, 1]))
    assert sorted(out) == ["embedding", "loss", "rotation/accuracy"]


def test_clear_errors_for_bad_use():
    with pytest.raises(ValueError, match="instance_dim must be >= 0"):
        RotationPrediction(backbone=TinyNet(), instance_dim=-1)
    with pytest.raises(ValueError, match="bank_momentum"):
        RotationPrediction(backbone=TinyNet(), instance_dim=4, bank_momentum=1.5)
    method = RotationPrediction(backbone=TinyNet(), instance_dim=4)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        method([x], indices=torch.tensor([0, 1]))
    method.init_memory_bank(5)
    with pytest.raises(ValueError, match="needs `indices`"):
        method([x])
    with pytest.raises(ValueError, match="outside the memory bank of 5"):
        method([x], indices=torch.tensor([0, 5]))


def test_bank_survives_a_state_dict_round_trip():
    method = decoupled()
    restored = RotationPrediction(backbone=TinyNet(), instance_dim=8)  # empty bank: takes the saved shape
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.memory_bank, method.memory_bank)


# --------------------------------------------------------------------------- a run
RUN = [
    "data.name=synthetic:64", "data.image_size=16", "augment.image_size=16", "backbone.name=resnet10t_cifar",
    "optim.batch_size=16", "optim.warmup_epochs=0", "method.instance_dim=16", "train.progress=false",
    "train.knn_every=-1", "train.precision=fp32", "train.deterministic=true",
]


def test_a_run_fills_the_bank_and_resume_continues_exactly(tmp_path):
    straight = Trainer(load_config("rotation", overrides=RUN + ["train.epochs=2", f"out={tmp_path / 'a'}"]))
    straight.fit()
    bank = straight.method.memory_bank
    assert bank.shape == (64, 16) and torch.allclose(bank.norm(dim=1), torch.ones(64), atol=1e-5)
    first = Trainer(load_config("rotation", overrides=RUN + ["train.epochs=2", f"out={tmp_path / 'b'}"]))
    first.method.on_train_start(first)
    first.train_epoch()  # one epoch of two, as if stopped there
    first.save_checkpoint()
    initial = F.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert (first.method.memory_bank - initial).abs().amax(1).min() > 0  # every image written in epoch 1
    resumed = Trainer(load_config("rotation", overrides=RUN + ["train.epochs=2", f"out={tmp_path / 'b'}"]))
    resumed.fit(resume=True)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["step"] == b["step"] == 8
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key
