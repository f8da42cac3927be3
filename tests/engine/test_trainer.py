import json
import signal
import subprocess
import time

import pytest
import torch

import visionssl as vs
from visionssl.engine import NonFiniteLossError, Trainer, load_checkpoint, load_config
from visionssl.engine.smoke import smoke_command, smoke_overrides

TINY = smoke_overrides(
    "data.name=synthetic:96",
    "backbone.name=resnet10t_cifar",
    "optim.batch_size=32",
    "method.proj_hidden_dim=64",
    "method.proj_dim=32",
    "train.log_every=1",
    "train.knn_every=1",
)


def tiny_config(tmp_path, *extra):
    return load_config("simclr", overrides=TINY + [f"out={tmp_path}", *extra])


def test_run_directory_holds_config_metrics_events_and_checkpoint(tmp_path):
    result = Trainer(tiny_config(tmp_path, "train.epochs=2")).fit()
    assert result["epoch"] == 2 and 0 <= result["knn/top1"] <= 100
    assert (tmp_path / "config.yaml").read_text().count("resnet10t_cifar") == 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr", "train/images_per_s", "collapse/effective_rank"} <= set(lines[0])
    assert any("knn/top1" in line for line in lines)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["format"] == "visionssl" and ckpt["epoch"] == 2 and ckpt["step"] == 6
    backbone = vs.zoo.load_backbone(tmp_path)
    assert backbone(torch.randn(2, 3, 16, 16)).shape == (2, 512)


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    cfg = tiny_config(
        tmp_path, "train.epochs=1", "optim.name=adamw", "optim.lr=0.003", "train.precision=fp32"
    )  # fp32 views: no autocast here
    trainer = Trainer(cfg)
    x = trainer.train_set.images[:32]
    torch.manual_seed(0)
    views = trainer.augment(x)
    losses = []
    for _ in range(8):
        loss = trainer.method(views)["loss"]
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.epochs=2", "train.knn_every=-1"))
    trainer.fit() if False else None
    trainer.train_epoch()
    trainer.save_checkpoint()
    good = load_checkpoint(trainer.checkpoint_path)
    forward = trainer.method.forward
    trainer.method.forward = lambda views: {**forward(views), "loss": torch.tensor(float("nan"), requires_grad=True)}
    trainer._forward = trainer.method.forward
    with pytest.raises(NonFiniteLossError, match="NaN or infinite.*last good checkpoint"):
        trainer.fit()
    kept = load_checkpoint(trainer.checkpoint_path)
    assert kept["step"] == good["step"] == 3


def pretrain_cmd(out, epochs):
    return smoke_command(out, epochs, changes=[*TINY, "train.knn_every=-1"])


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    epochs = 4
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(pretrain_cmd(straight, epochs), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(pretrain_cmd(killed, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(ckpt)["epoch"]
    assert 1 <= interrupted_at < epochs, "the run should have been killed part-way"

    subprocess.run(pretrain_cmd(killed, epochs) + ["--resume"], check=True, capture_output=True, timeout=300)
    a, b = load_checkpoint(straight), load_checkpoint(killed)
    assert a["step"] == b["step"] == epochs * 3
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_follows_hardware_bf16(monkeypatch, tmp_path, native_bf16, expected):
    from visionssl.engine import runtime

    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: native_bf16)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert runtime.resolve_precision("auto", torch.device("cpu"), cpu_bf16=False) == "fp32"
    t = Trainer(tiny_config(tmp_path, "train.device=cpu"))
    assert t.precision == expected
    # bf16 runs make bf16 views: autocast would round them at the first layer anyway
    assert t.augment.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_cpu_bf16_detection_reads_the_cpu_flags():
    from pathlib import Path

    from visionssl.engine.runtime import cpu_computes_bf16

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_computes_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_patch_methods_keep_fp32_on_cpu_under_auto(monkeypatch, tmp_path):
    from visionssl.engine import runtime

    monkeypatch.setattr(runtime, "cpu_computes_bf16", lambda: True)
    assert vs.methods.METHODS.get("context").cpu_bf16 is False and vs.methods.METHODS.get("jigsaw").cpu_bf16 is False
    cfg = load_config(
        "context",
        overrides=[o for o in TINY if not o.startswith("method.")]
        + ["method.patch_size=4", "method.gap=1", f"out={tmp_path}", "train.device=cpu"],
    )
    assert Trainer(cfg).precision == "fp32"


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (20, 0.5), (64, 0.01)])
def test_online_knn_gives_the_numbers_of_vs_eval_knn_on_the_same_features(k, temperature):
    from visionssl.engine.online_knn import knn_accuracy

    torch.manual_seed(k)
    centres = torch.randn(7, 32)
    bank_y, query_y = torch.randint(0, 7, (64,)), torch.randint(0, 7, (300,))
    bank_x, query_x = centres[bank_y] + 2 * torch.randn(64, 32), centres[query_y] + 2 * torch.randn(300, 32)
    expected = vs.eval.knn(bank_x, bank_y, query_x, query_y, k=k, temperature=temperature)
    got = knn_accuracy(bank_x, bank_y, query_x, query_y, k=k, temperature=temperature)
    assert got == {"top1": expected["top1"], "top5": expected["top5"]}
    assert 0 < got["top1"] < 100  # neither trivial nor hopeless: the votes decide


def test_online_knn_of_a_backbone_matches_extract_features_and_vs_eval_knn():
    from visionssl.data import load_dataset
    from visionssl.engine.online_knn import online_knn

    bank, queries = load_dataset("synthetic:64", "train", 16), load_dataset("synthetic:32", "test", 16)
    backbone = vs.create_backbone("resnet10t_cifar").train()
    (bx, by), (qx, qy) = (vs.eval.extract_features(backbone, ds, progress=False) for ds in (bank, queries))
    expected = vs.eval.knn(bx, by, qx, qy, k=10, temperature=0.1)
    assert online_knn(backbone, bank, queries, k=10, temperature=0.1) == {k: expected[k] for k in ("top1", "top5")}
    assert backbone.training  # its mode is put back
