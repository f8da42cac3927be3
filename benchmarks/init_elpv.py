"""Starting from pretrained weights on elpv: continued pretraining from ``random`` vs from an exported run.

Domain-adaptive pretraining, at a CPU budget. A source run pretrains SimCLR (the quick start's recipe,
``simclr_elpv``) on the elpv train split with its ``defect`` labels (the labels only choose the online kNN;
the training is self-supervised) and is exported with ``visionssl export``. Then the same continued run
(``--data elpv:type``: the same train images, online kNN on the cell-type labels) starts once from
``--init random`` and once from ``--init <the export>``, with the same epochs and seed. Each backbone is
scored by FAISS kNN (k=20, temperature 0.07) with the train split as the bank and the test split as the
queries, on both labels; the source export is the reference row (no continued epochs). With
``--equal-compute`` a random-init run given the source's and the continued run's epochs together is added.

    nice python benchmarks/init_elpv.py                    # 3 + 2 epochs at 32 px, ~10 min on 2 free cores
    nice python benchmarks/init_elpv.py --source-epochs 6 --epochs 3 --equal-compute
    python benchmarks/init_elpv.py --quick                 # seconds: synthetic data, nothing written

Writes benchmarks/results/init_elpv.json and .md (``--results NAME`` for another name).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, device_name, write_results

QUICK = (
    "data.image_size=18",
    "optim.batch_size=16",
    "method.proj_hidden_dim=16",
    "method.proj_dim=8",
    "backbone.name=resnet10t",
    "train.precision=fp32",  # seconds-long smoke runs: CPU bf16 on resnet10t at batch 16 went non-finite on some installs
)
LABELS = ("defect", "type")


def pretrain(out: Path, data: str, epochs: int, args: argparse.Namespace, *extra: str) -> float:
    """One ``visionssl pretrain`` run of the quick start's recipe; returns its wall-clock seconds."""
    from visionssl.cli import main
    from visionssl.data.dataset import stored_size

    options = ["--config", "simclr_elpv", "--data", data, "--epochs", str(epochs), "--seed", str(args.seed)]
    options += ["--image-size", str(args.image_size), "--no-progress", "--out", str(out), *extra]
    overrides = ["train.knn_every=-1", f"optim.warmup_epochs={min(1, epochs)}"]
    if args.quick:
        overrides += [*QUICK, f"data.image_size={stored_size(args.image_size)}"]
    started = time.perf_counter()
    code = main(["pretrain", *options, *overrides])
    if code != 0:
        raise SystemExit(f"pretraining into {out} failed (exit {code})")
    return round(time.perf_counter() - started, 1)


def knn_scores(checkpoint: Path, args: argparse.Namespace) -> dict[str, float]:
    """kNN top-1 (%) of a checkpoint's backbone on each label: bank the train split, queries the test split."""
    import torch

    import visionssl as vs
    from visionssl.data import load_dataset
    from visionssl.data.dataset import stored_size

    backbone = vs.zoo.resolve_checkpoint(checkpoint).build().eval()
    data = "synthetic:64" if args.quick else "elpv"
    sets = [load_dataset(data, split, stored_size(args.image_size)) for split in ("train", "test")]
    (train_x, _), (test_x, _) = (
        vs.eval.extract_features(backbone, ds, image_size=args.image_size, progress=False) for ds in sets
    )
    scores = {}
    for label in LABELS if not args.quick else ("label",):
        train_y, test_y = (ds.labels[label] if label in ds.labels else ds.targets for ds in sets)
        result = vs.eval.knn(train_x, train_y.to(torch.int64), test_x, test_y.to(torch.int64), k=20, temperature=0.07)
        scores[label] = round(float(result["top1"]), 2)
    return scores


def run(args: argparse.Namespace) -> dict[str, Any]:
    from visionssl.cli import main
    from visionssl.zoo import sha256_file

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="init_elpv_"))
    source_data, next_data = ("synthetic:64", "synthetic:64") if args.quick else ("elpv", "elpv:type")
    seconds = {"source": pretrain(work / "source", source_data, args.source_epochs, args)}
    export = work / "source.safetensors"
    if main(["export", str(work / "source"), "--out", str(export)]) != 0:
        raise SystemExit("visionssl export failed")
    seconds["from_random"] = pretrain(work / "from_random", next_data, args.epochs, args, "--init", "random")
    seconds["from_export"] = pretrain(work / "from_export", next_data, args.epochs, args, "--init", str(export))
    total = args.source_epochs + args.epochs
    rows = [
        ("source run (exported), no continued epochs", export, args.source_epochs),
        (f"continued from random, {args.epochs} epochs", work / "from_random", args.epochs),
        (f"continued from the export, {args.epochs} epochs", work / "from_export", total),
    ]
    if args.equal_compute:
        seconds["random_total"] = pretrain(work / "random_total", next_data, total, args, "--init", "random")
        rows.append((f"from random, {total} epochs (equal total compute)", work / "random_total", total))
    scored = [
        {"start": name, "epochs_in_all": epochs, "knn_top1": knn_scores(path, args)} for name, path, epochs in rows
    ]
    digest = sha256_file(export)
    shutil.rmtree(work)  # the runs and the export: only the numbers are kept
    return {
        "command": "python benchmarks/init_elpv.py " + " ".join(sys.argv[1:]),
        "machine": device_name("cpu"),
        "seconds": round(time.perf_counter() - started, 1),
        "budget": {
            "recipe": "simclr_elpv",
            "backbone": "resnet10t" if args.quick else "resnet18",
            "image_size": args.image_size,
            "source_epochs": args.source_epochs,
            "continued_epochs": args.epochs,
            "seed": args.seed,
            "run_seconds": seconds,
        },
        "export_sha256": digest,
        "rows": scored,
    }


def markdown(payload: dict[str, Any]) -> str:
    """The results table with its budget and machine."""
    b = payload["budget"]
    labels = list(payload["rows"][0]["knn_top1"])
    lines = [
        "# Starting from pretrained weights on elpv (`--init`)",
        "",
        f"Machine: {payload['machine']}. Made by `{payload['command']}`; {payload['seconds']} s in all.",
        "",
        f"Budget: SimCLR `{b['recipe']}` on {b['backbone']} at {b['image_size']} px, seed {b['seed']}: a source run of "
        f"{b['source_epochs']} epochs on the elpv train split (defect labels), exported with `visionssl export` "
        f"(sha256 {payload['export_sha256'][:16]}), then {b['continued_epochs']} continued epochs on `elpv:type` "
        "(the same train images, cell-type labels) from `--init random` or `--init <export>`. "
        "Run seconds: " + ", ".join(f"{k} {v}" for k, v in b["run_seconds"].items()) + ".",
        "",
        "kNN top-1 (%), k=20, bank: train split, queries: test split.",
        "",
        "| start | epochs in all | " + " | ".join(f"kNN {label}" for label in labels) + " |",
        "| --- | --- | " + " | ".join("---" for _ in labels) + " |",
    ]
    for r in payload["rows"]:
        scores = " | ".join(f"{r['knn_top1'][label]:.2f}" for label in labels)
        lines.append(f"| {r['start']} | {r['epochs_in_all']} | {scores} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source-epochs", type=int, default=3, help="epochs of the exported source run (default 3)")
    p.add_argument("--epochs", type=int, default=2, help="continued epochs from each start (default 2)")
    p.add_argument("--equal-compute", action="store_true", help="add a random-init run of source + continued epochs")
    p.add_argument("--image-size", type=int, default=32, help="view side in pixels (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--results", default="init_elpv", help="results name under benchmarks/results/")
    p.add_argument("--quick", action="store_true", help="a seconds-long dry run on synthetic data; writes nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.source_epochs, args.epochs, args.image_size = 1, 1, 16
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
