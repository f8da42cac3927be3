"""Preemption and crashes: SIGTERM/SIGINT stop cleanly at a step boundary, SIGKILL never corrupts a
checkpoint, and a resumed run ends bit-identical to an uninterrupted one; ``--deterministic`` runs are
bit-identical.

The backbone is a one-convolution network defined in a file (``file.py:function``, as a user would)
that can send a real signal to its own process at a chosen forward call: the signal arrives at an
exact, repeatable point of the run.
"""

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visionssl.cli import main
from visionssl.engine import Trainer, load_checkpoint, load_config
from visionssl.engine.smoke import smoke_command, smoke_overrides

BACKBONE = '''
import os, signal
from torch import nn


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> pool; sends signal $SIGNAL_NAME ($SIGNAL_REPEAT times) to its own process
    at training forward call(s) $SIGNAL_AT_CALL (comma-separated)."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.calls = 0
        self.signal_at = {int(c) for c in os.environ.get("SIGNAL_AT_CALL", "").split(",") if c}

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls in self.signal_at:
                for _ in range(int(os.environ.get("SIGNAL_REPEAT", "1"))):
                    os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL_NAME", "SIGTERM")))
        return self.net(x)


def tiny(**kw):
    return Tiny()
'''

EPOCHS = 24  # 4 steps each; a checkpoint after every epoch


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """--threads and --deterministic set process-wide torch state; put it back for the other tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone") / "signalling_backbone.py"
    path.write_text(BACKBONE)
    return path


def settings(backbone_file, epochs=EPOCHS):
    """The options of a smoke run after ``pretrain --out OUT`` (``smoke_command`` without its first six words)."""
    return smoke_command("OUT", epochs, ["--backbone", f"{backbone_file}:tiny"])[6:]


def visionssl(*args, env=None, **kw):
    """``python -m visionssl ARGS`` (the installed console script runs the same main())."""
    return subprocess.run(
        [sys.executable, "-m", "visionssl", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        **kw,
    )


def assert_same_tensors(a, b, where=""):
    """Every tensor in two nested checkpoint structures is bit-identical."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_run(a, b):
    for key in ("method", "optimizer", "scaler", "rng", "epoch", "step", "batch_in_epoch"):
        assert_same_tensors(a[key], b[key], key)


@pytest.fixture(scope="module")
def reference(backbone_file, tmp_path_factory):
    """An uninterrupted run, in its own process."""
    out = tmp_path_factory.mktemp("reference")
    result = visionssl("pretrain", "--out", str(out), *settings(backbone_file))
    assert result.returncode == 0, result.stderr
    return load_checkpoint(out)


def test_sigterm_saves_mid_epoch_exits_0_and_the_printed_resume_command_ends_bit_identical(
    backbone_file, reference, tmp_path
):
    out = tmp_path / "run"
    stopped = visionssl("pretrain", "--out", str(out), *settings(backbone_file), env={"SIGNAL_AT_CALL": "30"})
    assert stopped.returncode == 0, stopped.stderr
    assert "Traceback" not in stopped.stderr and "SIGTERM received" in stopped.stderr
    ckpt = load_checkpoint(out)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (30, 7, 2)  # saved at the step boundary
    command = f"visionssl pretrain --out {out} --resume"
    assert (
        f"stopped by SIGTERM at step 30; checkpoint: {out / 'checkpoints' / 'last.pt'}; resume with: {command}"
        in stopped.stdout
    )
    assert list((out / "checkpoints").iterdir()) == [out / "checkpoints" / "last.pt"]  # no temporary files

    resumed = visionssl(*shlex.split(command)[1:])  # exactly what the message says, nothing else
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(out)
    assert final["step"] == reference["step"] == EPOCHS * 4
    assert_same_run(final, reference)


def test_sigkill_at_random_moments_never_leaves_a_corrupt_checkpoint_and_resume_ends_bit_identical(
    backbone_file, reference, tmp_path
):
    """5 SIGKILLs: 3 at random moments after a checkpoint was written, 2 as soon as a temporary checkpoint
    file appears (in the middle of writing one). After each the checkpoint loads and has not gone back."""
    rng = random.Random(0)
    out, kills, last_step = tmp_path / "run", 0, 0
    ckpt_path = out / "checkpoints" / "last.pt"
    args = ["pretrain", "--out", str(out), *settings(backbone_file)]

    def temporaries():
        return set(ckpt_path.parent.glob(".last.pt.*.tmp")) if ckpt_path.parent.exists() else set()

    while kills < 5:
        before, stale = (ckpt_path.stat().st_mtime_ns if ckpt_path.exists() else None), temporaries()
        proc = subprocess.Popen(
            [sys.executable, "-m", "visionssl", *args, *(["--resume"] if before else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while (
            proc.poll() is None
            and time.time() < deadline
            and (not ckpt_path.exists() or ckpt_path.stat().st_mtime_ns == before)
        ):
            time.sleep(0.005)
        if kills % 2:  # mid-save: at the next checkpoint's temporary file
            while proc.poll() is None and time.time() < deadline and not temporaries() - stale:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        ckpt = load_checkpoint(ckpt_path)  # whole, never half-written
        assert ckpt["step"] >= last_step and ckpt["batch_in_epoch"] == 0
        last_step = ckpt["step"]
    assert kills == 5 and last_step < EPOCHS * 4, "every kill should land before the end of the run"

    finished = visionssl(*args, "--resume")
    assert finished.returncode == 0, finished.stderr
    assert_same_run(load_checkpoint(out), reference)
    assert list((out / "checkpoints").iterdir()) == [ckpt_path]  # temporary files of killed saves removed


def test_deterministic_runs_are_bit_identical_across_processes(backbone_file, reference, tmp_path):
    assert main(["pretrain", "--out", str(tmp_path / "again"), *settings(backbone_file)]) == 0  # in this process
    again = load_checkpoint(tmp_path / "again")
    assert_same_run(again, reference)  # every tensor: weights, BN statistics, optimizer state, RNG states
    other = load_checkpoint(tmp_path / "again")
    other["method"] = {k: v.clone() for k, v in other["method"].items()}
    other["method"]["backbone.net.0.weight"][0, 0, 0, 0] += 1e-7
    with pytest.raises(AssertionError):  # the comparison does see a change in one weight
        assert_same_run(other, reference)


# ------------------------------------------------------------------ in-process, both signals
def tiny_config(backbone_file, out, epochs=3):
    return load_config(
        "simclr",
        overrides=smoke_overrides(
            f"backbone.name={backbone_file}:tiny", "train.deterministic=true", f"train.epochs={epochs}", f"out={out}"
        ),
    )


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_in_fit_stops_at_the_step_boundary_and_resume_matches(backbone_file, tmp_path, monkeypatch, signame):
    straight = Trainer(tiny_config(backbone_file, tmp_path / "straight")).fit()
    assert "stopped_by" not in straight

    monkeypatch.setenv("SIGNAL_AT_CALL", "6")  # step 6: epoch 2, batch 2 of 4
    monkeypatch.setenv("SIGNAL_NAME", signame)
    handler = signal.getsignal(getattr(signal, signame))
    stopped = Trainer(tiny_config(backbone_file, tmp_path / "stopped"))
    result = stopped.fit()
    assert result["stopped_by"] == signame and result["step"] == 6
    assert signal.getsignal(getattr(signal, signame)) is handler  # the handlers are put back
    assert stopped.resume_command == f"visionssl pretrain --out {tmp_path / 'stopped'} --resume"
    assert load_checkpoint(tmp_path / "stopped")["batch_in_epoch"] == 2

    monkeypatch.delenv("SIGNAL_AT_CALL")
    resumed = Trainer(tiny_config(backbone_file, tmp_path / "stopped"))
    assert resumed.fit(resume=True)["step"] == 12
    assert_same_run(load_checkpoint(tmp_path / "stopped"), load_checkpoint(tmp_path / "straight"))


def test_a_second_sigint_interrupts_at_once(backbone_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SIGNAL_AT_CALL", "2")
    monkeypatch.setenv("SIGNAL_REPEAT", "2")  # an impatient user: Ctrl-C twice within one step
    monkeypatch.setenv("SIGNAL_NAME", "SIGINT")
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a shell's background job
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(backbone_file, tmp_path)).fit()
    assert signal.getsignal(signal.SIGINT) is before  # the trainer puts back what it found


def test_without_a_run_directory_signals_keep_their_usual_meaning(backbone_file, monkeypatch):
    monkeypatch.setenv("SIGNAL_AT_CALL", "2")
    monkeypatch.setenv("SIGNAL_NAME", "SIGINT")
    cfg = tiny_config(backbone_file, "null")
    cfg.out = None
    # Python's own Ctrl-C handler, also when the suite runs as a background job (which inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # nowhere to save: Ctrl-C interrupts as always
            Trainer(cfg).fit()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stale_temporary_files_of_a_killed_save_are_removed(backbone_file, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (folder / "keep.txt").write_text("not ours")
    Trainer(tiny_config(backbone_file, tmp_path, epochs=1)).fit()
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt", "last.pt"]
    assert Path(tmp_path / "config.yaml").read_text().count("signalling_backbone") == 1
