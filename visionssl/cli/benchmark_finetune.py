"""``visionssl benchmark finetune``: checkpoints fine-tuned side by side on fractions of the labels, over seeds.

Every checkpoint (as for ``benchmark knn``: a run directory, a checkpoint file, a ``.safetensors`` export, a
zoo name, ``random`` or ``random:BACKBONE``) is fine-tuned by ``visionssl.eval.finetune`` on every dataset,
fraction and seed. A seed picks the same labelled subset for every checkpoint (its sha256 is recorded per
seed), and the random-weights baselines get one initialisation per seed. One row per checkpoint x dataset x
fraction gives the mean and standard deviation of the test top-1 over the seeds.

Outputs under ``out_dir``: ``results.md`` and ``results.json`` (rows with every seed's result, settings,
machine).

Example:
    >>> from visionssl.cli.benchmark_finetune import run_finetune_benchmark
    >>> payload = run_finetune_benchmark(["runs/demo", "random"], ["elpv"], "bench", fractions=(0.1, 1.0),
    ...                                  seeds=(0, 1, 2))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visionssl.backbones.features import resolve_device
from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.cli.benchmark_setup import environment, load_benchmark_backbone, load_data, run_image_size
from visionssl.cli.options import positive_int
from visionssl.errors import ConfigError
from visionssl.eval.finetune import finetune
from visionssl.eval.finetune_subset import check_fraction, label_subset
from visionssl.eval.report import jsonable

__all__ = ["add_finetune_parser", "finetune_table", "run_finetune_benchmark"]


def run_finetune_benchmark(
    checkpoints: Sequence[str],
    datasets: Sequence[str | tuple[Any, Any]],
    out_dir: str | Path,
    *,
    fractions: Sequence[float] = (0.1, 1.0),
    seeds: Sequence[int] = (0,),
    image_size: int | None = None,
    device: str | None = None,
    finetune_options: dict[str, Any] | None = None,
    progress: bool = True,
    command: str | None = None,
    echo: Callable[[str], Any] = print,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Fine-tunes every checkpoint on every dataset, fraction and seed; writes results.md/.json, returns the payload.

    Args:
        checkpoints: checkpoint specs (see the module), ``random`` for the first one's backbone untrained.
        datasets: ``load_dataset`` specs, or ``(train_set, test_set)`` pairs.
        out_dir: where the results go (created).
        fractions: shares of the labels, each in (0, 1].
        seeds: one fine-tuning (subset, batches, baseline initialisation) per seed.
        image_size: view side (default: the first run's ``augment.image_size``, else 224).
        device: ``auto`` (default), ``cpu``, ``cuda``.
        finetune_options: keyword arguments of ``visionssl.eval.finetune`` (``epochs``, ``lr``, ...).
        progress, command, echo, trust_code: as ``visionssl.cli.benchmark.run_benchmark``.

    Returns:
        ``{"kind": "finetune", "rows", "settings", "environment", ...}`` as written to ``results.json``.
    """
    fractions = [check_fraction(f) for f in fractions]
    if not checkpoints or not datasets or not fractions or not seeds:
        raise ConfigError("give at least one checkpoint, dataset, fraction and seed")
    options = dict(finetune_options or {})
    for reserved in ("fraction", "seed", "image_size", "device", "return_model"):
        if reserved in options:
            raise ConfigError(f"finetune_options may not set {reserved!r}; it is an argument of the benchmark")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    image_size = image_size or run_image_size(checkpoints, trust_code) or 224
    started = time.time()
    data = [load_data(spec, image_size) for spec in datasets]
    for _, train_set, _ in data:  # a fraction too small for a dataset fails before anything trains
        for fraction in fractions:
            label_subset(train_set.targets, fraction, seeds[0])
    rows: list[dict[str, Any]] = []
    for spec in checkpoints:
        random = str(spec) == "random" or str(spec).startswith("random:")
        name, backbone = load_benchmark_backbone(spec, checkpoints, seeds[0], trust_code)
        for data_name, train_set, test_set in data:
            for fraction in fractions:
                runs = []
                for seed in seeds:
                    if random and seed != seeds[0]:  # an untrained network of its own per seed
                        backbone = load_benchmark_backbone(spec, checkpoints, seed, trust_code)[1]
                    result = finetune(
                        backbone,
                        train_set,
                        test_set,
                        fraction=fraction,
                        seed=seed,
                        image_size=image_size,
                        device=dev,
                        progress=progress,
                        **options,
                    )
                    runs.append({"seed": seed, **result})
                    echo(
                        f"{name} on {data_name}, {fraction:g} of labels, seed {seed}: top-1 {result['top1']:.2f}% "
                        f"(epoch {result['best_epoch']}, {result['seconds']:.0f}s)"
                    )
                top1 = [r["top1"] for r in runs]
                rows.append(
                    {
                        "checkpoint": name,
                        "dataset": data_name,
                        "fraction": fraction,
                        "labels": runs[0]["subset"]["images"],
                        "seeds": len(runs),
                        "top1": round(statistics.fmean(top1), 4),
                        "top1_std": round(statistics.stdev(top1), 4) if len(top1) > 1 else 0.0,
                        "top5": round(statistics.fmean(r["top5"] for r in runs), 4),
                        "best_epochs": [r["best_epoch"] for r in runs],
                        "runs": runs,
                    }
                )
    last = rows[-1]["runs"][-1]
    payload: dict[str, Any] = {
        "kind": "finetune",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.time() - started, 1),
        "settings": {
            "image_size": image_size,
            "device": str(dev),
            "fractions": fractions,
            "seeds": list(seeds),
            **{k: last[k] for k in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "augment")},
            "finetune_options": jsonable(options),
        },
        "environment": environment(dev),
        "rows": rows,
    }
    (out_dir / "results.md").write_text(finetune_table(payload) + "\n")
    payload["files"] = ["results.md", "results.json"]
    (out_dir / "results.json").write_text(json.dumps(jsonable(payload), indent=2) + "\n")
    echo(finetune_table(payload))
    echo("wrote " + ", ".join(str(out_dir / f) for f in payload["files"]))
    return payload


def finetune_table(payload: dict[str, Any]) -> str:
    """The benchmark's rows as Markdown: test top-1 mean +- std over seeds per checkpoint, dataset and fraction.

    Example:
        >>> rows = [{"checkpoint": "a", "dataset": "d", "fraction": 0.1, "labels": 20, "seeds": 3, "top1": 71.5,
        ...          "top1_std": 1.25, "best_epochs": [3, 4, 4]}]
        >>> print(finetune_table({"rows": rows, "environment": {"device": "cpu", "threads": 2}}).splitlines()[-1])
        | a | d | 0.1 | 20 | 71.50 +- 1.25 | 3 | 3, 4, 4 |
    """
    env = payload["environment"]
    lines = [
        "### Fine-tuning with few labels: test top-1 (%)",
        "",
        f"Machine: {env['device']}, {env['threads']} threads.",
        "",
        "| checkpoint | dataset | fraction | labels | top-1 (mean +- std) | seeds | chosen epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["rows"]:
        cells = [r["checkpoint"], r["dataset"], f"{r['fraction']:g}", r["labels"]]
        cells += [f"{r['top1']:.2f} +- {r['top1_std']:.2f}", r["seeds"], ", ".join(map(str, r["best_epochs"]))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``benchmark finetune`` beside ``benchmark knn`` and ``benchmark linear-probe``."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune checkpoints side by side on fractions of the labels, mean +- std over seeds",
        description="Fine-tune every checkpoint (whole backbone + linear head) on a class-balanced, seeded "
        "fraction of every dataset's train labels (the same images for every checkpoint), choose the epoch "
        "on a held-out part of that subset, and tabulate the test top-1 as mean +- std over the seeds.",
    )
    p.add_argument("--checkpoint", action="append", required=True, help="as in benchmark knn; repeat for several")
    p.add_argument("--data", action="append", default=None, help="labelled dataset spec; repeat (default: elpv)")
    p.add_argument(
        "--fraction", type=float, nargs="+", default=[0.1, 1.0], help="shares of the labels (default 0.1 1.0)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one fine-tuning per seed (default 0)")
    p.add_argument("--epochs", type=positive_int, default=30, help="fine-tuning epochs (default 30)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--optimizer", choices=("auto", "sgd", "adamw"), default="auto", help="auto: AdamW for ViTs")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: by optimizer and batch)")
    p.add_argument("--augment", default="mae", help="augmentation preset of the training views (default mae)")
    p.add_argument("--out", default=None, help="output directory (default: runs/benchmark-finetune)")
    p.add_argument("--image-size", type=positive_int, default=None, help="view size (default: the first run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.set_defaults(run=_run_cli, benchmark_kind="finetune")


def _run_cli(args: argparse.Namespace) -> int:
    import shlex

    options = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer}
    options.update(augment=args.augment, **({"lr": args.lr} if args.lr is not None else {}))
    run_finetune_benchmark(
        args.checkpoint,
        args.data or ["elpv"],
        args.out or "runs/benchmark-finetune",
        fractions=args.fraction,
        seeds=args.seeds,
        image_size=args.image_size,
        device=args.device,
        finetune_options=options,
        progress=not args.no_progress,
        command=" ".join(shlex.quote(w) for w in _command_words(args)),
        trust_code=args.trust_code,
    )
    return 0


def _command_words(args: argparse.Namespace) -> list[str]:
    """The command as typed, rebuilt from the parsed options (recorded in the results)."""
    words = ["visionssl", "benchmark", "finetune"]
    words += [w for c in args.checkpoint for w in ("--checkpoint", c)]
    words += [w for d in args.data or [] for w in ("--data", d)]
    words += ["--fraction", *(f"{f:g}" for f in args.fraction), "--seeds", *map(str, args.seeds)]
    for option in ("epochs", "batch_size", "optimizer", "lr", "augment", "out", "image_size", "device"):
        if getattr(args, option) is not None:
            words += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    return words
