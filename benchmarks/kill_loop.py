"""Kill loop: interrupt short pretraining runs at random moments, many times, and check that nothing is lost.

Each round is one run of ``visionssl pretrain`` (a tiny backbone on 16 px synthetic images, a checkpoint
every epoch, CPU, ``--deterministic --threads 1``). The run is interrupted again and again, in turn: with
SIGKILL as soon as a temporary checkpoint file appears (in the middle of writing a checkpoint), SIGKILL at
a random moment after a checkpoint was written (twice), SIGKILL at a uniformly random moment since the
process started, and SIGTERM (a cluster's preemption: the run saves at the next step and exits 0). After every
interruption the checkpoint must load and must not have gone backwards; the run then continues with
``--resume``. When a round's run reaches its last epoch, every tensor of its checkpoint (weights, BatchNorm
statistics, optimizer state, RNG states) must equal an uninterrupted reference run's. (Run it on a code
base nobody edits meanwhile: a changed source file changes the numbers.)

    python benchmarks/kill_loop.py                 # 50 interruptions (about 5 minutes on 2 CPU cores)
    python benchmarks/kill_loop.py --kills 500     # longer

Prints the counts; writes benchmarks/results/kill_loop.json. Exit code 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from visionssl.engine import CheckpointError, load_checkpoint  # noqa: E402
from visionssl.engine.smoke import smoke_command  # noqa: E402

BACKBONE = """
from torch import nn


def tiny(**kw):
    net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = 16
    return net
"""


def pretrain_args(out: Path, backbone: Path, epochs: int) -> list[str]:
    return smoke_command(out, epochs, ["--backbone", f"{backbone}:tiny"])


def same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def same_run(a: dict, b: dict) -> bool:
    return all(same_tensors(a[k], b[k]) for k in ("method", "optimizer", "scaler", "rng", "epoch", "step"))


def temporaries(ckpt_path: Path) -> set[str]:
    return {p.name for p in ckpt_path.parent.glob(f".{ckpt_path.name}.*.tmp")} if ckpt_path.parent.exists() else set()


def report_round(round_no: int, ckpt: dict, reference: dict) -> bool:
    differ = [
        k for k in ("method", "optimizer", "scaler", "rng", "epoch", "step") if not same_tensors(ckpt[k], reference[k])
    ]
    print(
        f"\nround {round_no}: "
        + ("bit-identical to the reference run" if not differ else f"DIFFERS in {', '.join(differ)}")
    )
    return not differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="interruptions in all (default 50)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per round's run (4 steps each)")
    parser.add_argument("--max-delay", type=float, default=0.3, help="seconds after a new checkpoint before the kill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/kill_loop.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="visionssl-kill-loop-"))
    backbone = work / "tiny_backbone.py"
    backbone.write_text(BACKBONE)

    reference_dir = work / "reference"
    subprocess.run(pretrain_args(reference_dir, backbone, args.epochs), check=True, capture_output=True)
    reference = load_checkpoint(reference_dir)

    counts = {
        "interruptions": 0,
        "sigkill_mid_save": 0,
        "sigkill_after_checkpoint": 0,
        "sigkill_any_moment": 0,
        "sigterm": 0,
        "killed_mid_save": 0,
        "corrupt_checkpoints": 0,
        "went_backwards": 0,
        "sigterm_not_clean": 0,
        "rounds_finished": 0,
        "rounds_bit_identical": 0,
    }
    started = time.time()
    round_no, out, last_step = 0, work / "round0", 0
    while counts["interruptions"] < args.kills:
        ckpt_path = out / "checkpoints" / "last.pt"
        before = ckpt_path.stat().st_mtime_ns if ckpt_path.exists() else None
        stale = temporaries(ckpt_path)  # left by the last kill; the new process deletes them
        proc = subprocess.Popen(
            pretrain_args(out, backbone, args.epochs) + (["--resume"] if before else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        n = counts["interruptions"]
        how = (
            "sigkill_mid_save",
            "sigkill_after_checkpoint",
            "sigkill_any_moment",
            "sigkill_after_checkpoint",
            "sigterm",
        )[n % 5]
        if how == "sigkill_any_moment":
            time.sleep(rng.uniform(0, 8.0))
        else:  # wait for this process's first checkpoint
            while proc.poll() is None and (not ckpt_path.exists() or ckpt_path.stat().st_mtime_ns == before):
                time.sleep(0.002)
            if how == "sigkill_mid_save":  # then strike while the next one is being written
                while proc.poll() is None and not temporaries(ckpt_path) - stale:
                    time.sleep(0.0002)
            else:
                time.sleep(rng.uniform(0, args.max_delay))
        interrupted = proc.poll() is None
        if interrupted:
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            counts["interruptions"] += 1
            counts[how] += 1
        stdout, _ = proc.communicate()
        if interrupted:  # a new temporary file left behind: killed while writing a checkpoint
            counts["killed_mid_save"] += bool(temporaries(ckpt_path) - stale)
        if ckpt_path.exists():
            try:
                step = load_checkpoint(ckpt_path)["step"]
            except CheckpointError as exc:
                print(f"\nCORRUPT: {exc}")
                counts["corrupt_checkpoints"] += 1
                step = last_step
            counts["went_backwards"] += step < last_step
            last_step = step
        if interrupted and how == "sigterm":  # a clean stop: exit 0 and the resume line (or it had just finished)
            stopped = proc.returncode == 0 and "resume with: visionssl pretrain --out" in stdout
            finished = last_step == reference["step"]
            counts["sigterm_not_clean"] += not (stopped or finished)
        if proc.returncode == 0 and last_step == reference["step"]:  # the round's run is complete
            counts["rounds_finished"] += 1
            counts["rounds_bit_identical"] += report_round(round_no, load_checkpoint(ckpt_path), reference)
            round_no += 1
            out, last_step = work / f"round{round_no}", 0
        print(
            f"\r{counts['interruptions']}/{args.kills} interruptions, round {round_no}, step {last_step}",
            end="",
            flush=True,
        )
    print()
    if (out / "checkpoints" / "last.pt").exists():  # finish the last round, uninterrupted
        subprocess.run(pretrain_args(out, backbone, args.epochs) + ["--resume"], check=True, capture_output=True)
        counts["rounds_finished"] += 1
        counts["rounds_bit_identical"] += report_round(round_no, load_checkpoint(out), reference)
    lost = (
        counts["corrupt_checkpoints"]
        + counts["went_backwards"]
        + counts["sigterm_not_clean"]
        + (counts["rounds_finished"] - counts["rounds_bit_identical"])
    )
    for key, value in counts.items():
        print(f"  {key:<26} {value}")
    print(f"  {'wall seconds':<26} {time.time() - started:.0f}")
    print("nothing lost" if not lost else f"LOST: {lost} problems")
    if not args.no_write:
        path = write_results("kill_loop", {"args": vars(args), **counts, "nothing_lost": not lost})
        print(f"wrote {path}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
