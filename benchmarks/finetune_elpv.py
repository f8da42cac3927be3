"""Fine-tuning with few labels on elpv: the quick-start checkpoint against random weights, 10% and 100% of the labels.

The semi-supervised protocol of SimCLR / BYOL scaled to a CPU: ``visionssl.eval.finetune`` trains the whole
backbone and a linear head on a class-balanced, seeded fraction of the elpv train split's defect labels (the
same images for both backbones at a seed), chooses the epoch on a held-out fifth of that subset and scores
the test split once. Both rows start from the same architecture: the pretrained ResNet-18 and the same
ResNet-18 with random weights (one initialisation per seed). Mean +- std over the seeds.

The checkpoint is pretrained here with the quick start's recipe (``simclr_elpv``) unless ``--checkpoint``
names one; ``--pretrain-epochs`` and ``--image-size`` shrink its budget (stated in the table).

    python benchmarks/finetune_elpv.py                               # quick start (12 epochs, 64 px), 3 seeds
    nice python benchmarks/finetune_elpv.py --pretrain-epochs 3 --image-size 32 --epochs 3
    python benchmarks/finetune_elpv.py --checkpoint runs/quickstart  # reuse a finished quick start
    python benchmarks/finetune_elpv.py --quick                       # seconds: synthetic data, nothing written

Writes benchmarks/results/finetune_elpv.json and .md (``--results NAME`` for another name).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, device_name, write_results

QUICK_PRETRAIN = (
    "data.name=synthetic:64",
    "data.image_size=18",
    "augment.image_size=16",
    "optim.batch_size=16",
    "method.proj_hidden_dim=16",
    "method.proj_dim=8",
    "backbone.name=resnet10t",
    # bf16 autocast on this kind of CPU is not bit-reproducible from run to run (oneDNN), and 4 steps of a
    # 10-layer net on 16 images at 16 px now and then went non-finite in it: the dry run checks the plumbing
    "train.precision=fp32",
)


def pretrain(run_dir: Path, epochs: int, image_size: int, quick: bool) -> float:
    """Runs the quick start's recipe into ``run_dir``; returns its wall-clock seconds."""
    from visionssl.cli import main
    from visionssl.data.dataset import stored_size

    overrides = [f"train.epochs={epochs}", "train.knn_every=-1", "train.progress=false"]
    overrides += [f"augment.image_size={image_size}", f"data.image_size={stored_size(image_size)}"]
    if quick:
        overrides += list(QUICK_PRETRAIN)
    started = time.perf_counter()
    code = main(["pretrain", "--config", "simclr_elpv", "--out", str(run_dir), *overrides])
    if code != 0:
        raise SystemExit(f"pretraining failed (exit {code})")
    return round(time.perf_counter() - started, 1)


def markdown(payload: dict[str, Any]) -> str:
    """The results table with its budget and machine."""
    b = payload["budget"]
    lines = [
        "# Fine-tuning with few labels on elpv (defect labels)",
        "",
        f"Machine: {payload['machine']}. Made by `{payload['command']}`.",
        "",
        f"Budget: checkpoint {b['checkpoint']}"
        + f" (SimCLR `simclr_elpv`, {b['pretrain_epochs']} epochs at {b['image_size']} px"
        + (f", {b['pretrain_s']} s of pretraining)" if b["pretrain_s"] else ")")
        + f"; fine-tuning {b['epochs']} epochs, batch {b['batch_size']}, {b['optimizer']} lr {b['lr']:g}, "
        f"`{b['augment']}` views at {b['image_size']} px, the epoch chosen on a held-out fifth of the labelled subset; "
        f"seeds {', '.join(map(str, b['seeds']))}; {payload['seconds']} s in all.",
        "",
        *([payload["note"], ""] if payload.get("note") else []),
        "| backbone | labels | test top-1 (mean +- std) | per seed | chosen epochs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in payload["rows"]:
        per_seed = ", ".join(f"{run['top1']:.2f}" for run in r["runs"])
        lines.append(
            f"| {r['checkpoint']} | {r['fraction']:.0%} ({r['labels']}) | {r['top1']:.2f} +- {r['top1_std']:.2f} | "
            f"{per_seed} | {', '.join(map(str, r['best_epochs']))} |"
        )
    lines += ["", "The subsets (sha256 of the chosen indices, the same for both backbones at a seed):", ""]
    for r in payload["rows"]:
        if r is payload["rows"][0] or r["checkpoint"] == payload["rows"][0]["checkpoint"]:
            for run in r["runs"]:
                s = run["subset"]
                lines.append(f"- {r['fraction']:.0%}, seed {run['seed']}: {s['per_class']}, {s['indices_sha256'][:16]}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visionssl.cli.benchmark_finetune import run_finetune_benchmark

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="finetune_elpv_"))
    checkpoint, pretrain_s = args.checkpoint, None
    if checkpoint is None:
        checkpoint = str(work / "quickstart")
        pretrain_s = pretrain(Path(checkpoint), args.pretrain_epochs, args.image_size, args.quick)
    data = "synthetic:64" if args.quick else "elpv"
    options = {"epochs": args.epochs, "batch_size": args.batch_size}
    result = run_finetune_benchmark(
        [checkpoint, "random"],
        [data],
        work / "bench",
        fractions=args.fractions,
        seeds=args.seeds,
        image_size=args.image_size,
        device=args.device,
        finetune_options=options,
        progress=not args.quick,
    )
    first = result["rows"][0]["runs"][0]
    if args.checkpoint is not None:  # its own budget, from the run's config
        from visionssl.zoo import resolve_checkpoint

        config = resolve_checkpoint(args.checkpoint).config
        args.pretrain_epochs = (config.get("train") or {}).get("epochs")
    return {
        "command": "python benchmarks/finetune_elpv.py " + " ".join(sys.argv[1:]),
        "machine": device_name(result["settings"]["device"]),
        "seconds": round(time.perf_counter() - started, 1),
        "budget": {
            "checkpoint": "quick start" if args.checkpoint is None else args.checkpoint,
            "pretrain_epochs": args.pretrain_epochs,
            "pretrain_s": pretrain_s,
            "image_size": args.image_size,
            "seeds": list(args.seeds),
            **{k: first[k] for k in ("epochs", "batch_size", "optimizer", "lr", "augment")},
        },
        "note": args.note,
        "environment": result["environment"],
        "rows": [
            {
                **r,
                "checkpoint": r["checkpoint"].replace("random (", "random weights (")
                if r["checkpoint"].startswith("random")
                else "pretrained",
            }
            for r in result["rows"]
        ],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a finished run or export (default: pretrain the quick start)")
    p.add_argument(
        "--pretrain-epochs", type=int, default=12, help="quick-start epochs (default 12, as the quick start)"
    )
    p.add_argument("--image-size", type=int, default=64, help="view side (default 64, as the quick start)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch (default 64)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0], help="shares of the labels")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--results", default="finetune_elpv", help="results name under benchmarks/results/")
    p.add_argument("--quick", action="store_true", help="a seconds-long dry run on synthetic data; writes nothing")
    p.add_argument("--note", default=None, help="a sentence for the table, e.g. where --checkpoint came from")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.image_size, args.epochs, args.seeds = 1, 16, 1, args.seeds[:2]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    payload = run(args)
    text = markdown(payload)
    print(text)
    if not args.quick:
        write_results(args.results, payload)
        (RESULTS / f"{args.results}.md").write_text(text)
        print(f"wrote {RESULTS / args.results}.json and .md")
    else:
        print(json.dumps(payload["budget"]))
    return payload


if __name__ == "__main__":
    main()
