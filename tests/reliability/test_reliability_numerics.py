"""NaN/inf in the loss or the gradients: ``train.on_nonfinite=stop`` ends the run, ``skip`` skips exactly
the bad step (weights, buffers and optimizer state as before it), counted and logged, and stops after too
many in a row; a non-finite state is never written over the last good checkpoint; an fp16 loss-scale
underflow is reported. Faults are injected by a SimCLR subclass at chosen forward calls."""

import copy
import json
import logging

import pytest
import torch
from torch import nn

from visionssl.engine import NonFiniteLossError, Trainer, load_checkpoint, load_config
from visionssl.methods.simclr import SimCLR


class TinyNet(nn.Module):
    num_features = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.net = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(self.conv(x))


class FaultySimCLR(SimCLR):
    """SimCLR that injects ``faults[call]`` at the given training forward calls (1 = the first step):

    nan_loss: loss + NaN (the gradients stay finite); inf_loss: loss * inf (gradients NaN/inf too);
    nan_grad: a finite loss whose backward gives the first convolution a NaN gradient;
    inf_grad: the same with +inf; nan_input: NaN images (BatchNorm's running statistics become NaN).
    """

    def __init__(self, faults):
        super().__init__(backbone=TinyNet(), proj_hidden_dim=16, proj_dim=8)
        self.faults, self.calls, self.poison = faults, 0, None
        self.backbone.conv.weight.register_hook(self._grad_hook)

    def _grad_hook(self, grad):
        value, self.poison = self.poison, None
        return grad if value is None else torch.full_like(grad, value)

    def forward(self, views):
        self.calls += 1
        fault = self.faults.get(self.calls) if self.training else None
        if fault == "nan_input":
            views = [v * float("nan") for v in views]
        self.poison = {"nan_grad": float("nan"), "inf_grad": float("inf")}.get(fault)
        out = super().forward(views)
        if fault == "nan_loss":
            out["loss"] = out["loss"] + float("nan")
        elif fault == "inf_loss":
            out["loss"] = out["loss"] * float("inf")
        return out


def trainer(tmp_path, faults, *overrides):
    cfg = load_config(
        "simclr",
        overrides=[
            "data.name=synthetic:64",
            "data.image_size=16",
            "augment.image_size=16",
            "optim.batch_size=16",
            "optim.warmup_epochs=0",
            "train.knn_every=-1",
            "train.progress=false",
            "train.log_every=1",
            "backbone.name=resnet10t_cifar",
            f"out={tmp_path}",
            *overrides,
        ],
    )
    return Trainer(cfg, method=FaultySimCLR(faults))


def record_states(t):
    """Copies of the method state and the optimizer's per-parameter state (momentum buffers) after every
    optimizer step, by step number (the learning rate follows its schedule either way)."""
    states = {0: (copy.deepcopy(t.method.state_dict()), copy.deepcopy(t.optimizer.state_dict()["state"]))}
    on_step_end = t.method.on_step_end

    def record(step, total):
        on_step_end(step, total)
        states[step] = (copy.deepcopy(t.method.state_dict()), copy.deepcopy(t.optimizer.state_dict()["state"]))

    t.method.on_step_end = record
    return states


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def metrics(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fault", ["nan_loss", "inf_loss", "nan_grad", "inf_grad", "nan_input"])
def test_skip_leaves_weights_buffers_and_optimizer_exactly_as_before_the_bad_step(tmp_path, fault, caplog):
    t = trainer(tmp_path, {3: fault}, "train.on_nonfinite=skip", "train.epochs=2")
    states = record_states(t)
    with caplog.at_level(logging.WARNING, logger="visionssl.engine.trainer"):
        result = t.fit()
    assert result["step"] == 8 and t.skipped_steps == 1
    assert same(states[3], states[2])  # every weight, BatchNorm statistic and momentum buffer
    assert not same(states[4], states[3])  # and training goes on
    assert "step 3: NaN or infinite loss or gradients, optimizer step skipped" in caplog.text
    logged = metrics(tmp_path)
    assert [m["train/skipped_steps"] for m in logged[:4]] == [0, 0, 1, 1]
    losses = [m["train/loss"] for m in logged]
    assert all(loss == loss for i, loss in enumerate(losses) if i != 2)  # the skipped loss is not averaged in ...
    assert losses[2] != losses[2]  # ... and a window (log_every=1) of skipped steps only has no loss: NaN
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


def test_skip_stops_after_more_than_max_skipped_steps_in_a_row_keeping_the_last_good_checkpoint(tmp_path):
    t = trainer(
        tmp_path,
        {5: "nan_loss", 6: "nan_grad", 7: "inf_loss"},
        "train.on_nonfinite=skip",
        "train.max_skipped_steps=2",
        "train.epochs=3",
    )
    with pytest.raises(
        NonFiniteLossError,
        match=rf"3 steps in a row .*train\.max_skipped_steps=2\) at step 7; the last good "
        rf"checkpoint is kept at {tmp_path / 'checkpoints' / 'last.pt'}",
    ):
        t.fit()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 4 and ckpt["skipped_steps"] == 0


def test_a_good_step_resets_the_count_of_bad_steps_in_a_row(tmp_path):
    t = trainer(
        tmp_path,
        {2: "nan_loss", 3: "nan_loss", 5: "nan_grad", 6: "inf_grad"},
        "train.on_nonfinite=skip",
        "train.max_skipped_steps=2",
        "train.epochs=2",
    )
    assert t.fit()["train/skipped_steps"] == 4


def test_stop_ends_the_run_on_nan_gradients_even_when_the_loss_is_finite(tmp_path):
    t = trainer(tmp_path, {6: "nan_grad"}, "train.epochs=3", "train.log_every=4")
    with pytest.raises(
        NonFiniteLossError, match="loss or the gradients became NaN or infinite near step 8 .*last good checkpoint"
    ):
        t.fit()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 4  # epoch 1's checkpoint; the damaged weights of epoch 2 were never written
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


def test_a_non_finite_state_is_never_written_over_the_last_good_checkpoint(tmp_path):
    t = trainer(tmp_path, {}, "train.epochs=1")
    t.fit()
    path = t.checkpoint_path
    good = path.read_bytes()
    with torch.no_grad():
        t.method.projector[0].weight[0, 0] = float("inf")
    with pytest.raises(
        NonFiniteLossError,
        match=r"not writing a checkpoint at step 4: projector\.0\.weight holds NaN or "
        rf"infinite values; the last good checkpoint is kept at {path}",
    ):
        t.save_checkpoint()
    assert path.read_bytes() == good


def test_fp16_loss_scale_underflow_is_reported_and_the_overflowing_steps_are_skipped(tmp_path, caplog):
    faults = {call: "inf_grad" for call in range(1, 9)}  # every gradient overflows: the scale keeps halving
    t = trainer(tmp_path, faults, "train.precision=fp16", "train.min_loss_scale=1e4", "train.epochs=2")
    assert t.scaler.is_enabled() and t.scaler.get_scale() == 65536
    before = copy.deepcopy(t.method.state_dict())
    with caplog.at_level(logging.WARNING, logger="visionssl.engine.trainer"):
        t.fit()
    scales = [m["train/loss_scale"] for m in metrics(tmp_path) if "train/loss_scale" in m]
    assert scales == [65536 / 2**k for k in range(1, 9)]
    assert caplog.text.count("fp16 loss scale fell to 8.19e+03 (below train.min_loss_scale=10000) at step 3") == 1
    params = dict(t.method.named_parameters())
    assert all(torch.equal(before[k], params[k]) for k in params)  # the GradScaler skipped every step
