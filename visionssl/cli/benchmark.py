"""``visionssl benchmark knn|linear-probe``: checkpoints x datasets -> tables, plots and a transfer-suite score.

Every checkpoint (a run directory, a checkpoint file, an exported ``.safetensors``, a zoo name, or ``random`` /
``random:BACKBONE`` for a random-weights baseline) is evaluated on every dataset spec (``elpv``, ``elpv:type``,
an ImageFolder path, ``cifar10:PATH``, ...) with the test split as queries and the train split as the bank
(kNN) or the training data (linear probe). Features are cached under ``cache_dir`` (default
``OUT/feature_cache``), so running the benchmark again, or the other kind, does not run the backbones again.

Outputs under ``out_dir``: ``results.md``, ``results.csv``, ``results.json`` (rows, summary, settings,
versions), ``accuracy.png`` (top-1 per checkpoint and dataset) and, for runs whose ``metrics.jsonl`` logged
online kNN, ``knn_over_epochs.png``. The summary gives every checkpoint its mean top-1 over the datasets and
its mean rank (1 = best on a dataset; ties share the average rank), as SUPERB does for speech.

Example:
    >>> from visionssl.cli.benchmark import run_benchmark
    >>> result = run_benchmark("knn", ["runs/demo", "random"], ["elpv", "elpv:type"], "bench")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visionssl.backbones.features import resolve_device
from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.cli.benchmark_finetune import add_finetune_parser
from visionssl.cli.benchmark_setup import environment, load_benchmark_backbone, load_data, run_image_size
from visionssl.cli.options import positive_int
from visionssl.errors import ConfigError
from visionssl.eval.features import extract_features, feature_cache_path
from visionssl.eval.knn import knn
from visionssl.eval.linear_probe import OPTIMIZERS as PROBE_OPTIMIZERS
from visionssl.eval.linear_probe import linear_probe
from visionssl.eval.report import (
    jsonable,
    markdown_table,
    read_knn_curve,
    slug,
    summarize,
    write_plots,
    write_tables,
)

KINDS = ("knn", "linear-probe")

__all__ = ["KINDS", "add_parser", "run_benchmark"]


def run_benchmark(
    kind: str,
    checkpoints: Sequence[str],
    datasets: Sequence[str | tuple[Any, Any]],
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    device: str | None = None,
    batch_size: int = 256,
    k: int | Sequence[int] = (200, 20),
    temperature: float = 0.07,
    probe_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    plots: bool = True,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
    echo: Callable[[str], Any] = print,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Evaluates every checkpoint on every dataset and writes the tables and plots; returns the JSON payload.

    Args:
        kind: ``"knn"`` or ``"linear-probe"``.
        checkpoints: run directories, checkpoint files, ``.safetensors`` exports, zoo names, ``random``
            (random weights of the first checkpoint's backbone) or ``random:BACKBONE``.
        datasets: ``load_dataset`` specs, or ``(train_set, test_set)`` pairs of ``ImageDataset``.
        out_dir: where the results go (created).
        trust_code: allow checkpoints whose backbone is code (``module:function``); by default a file may
            name registered or timm backbones only (your own runs excepted, see ``visionssl.backbones.trust``).
        image_size: side of the backbone input (default: the first run's ``augment.image_size``, else 224);
            images are decoded at 1.125x and resized, as ``visionssl eval`` and the trainer's online kNN do.
        device: ``"auto"`` (default), ``"cpu"``, ``"cuda"``.
        batch_size: images per forward pass.
        k, temperature: kNN neighbours (the first ``k`` is the headline ``top1``) and vote temperature.
        probe_options: keyword arguments of ``linear_probe`` (``lrs``, ``weight_decays``, ``epochs``, ...).
        cache_dir: feature cache (default ``out_dir/feature_cache``).
        plots: write the PNG plots (needs matplotlib).
        seed: seeds the random-weights baselines.
        progress: progress bars.
        command: the command line to record in the results (the CLI passes it).
        echo: where the terminal table goes.

    Returns:
        ``{"kind", "rows", "summary", "settings", "files", ...}`` as written to ``results.json``.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown benchmark kind {kind!r}; valid: {', '.join(KINDS)}")
    if not checkpoints or not datasets:
        raise ConfigError("give at least one checkpoint and one dataset")
    ks = [k] if isinstance(k, int) else list(k)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "feature_cache"
    dev = resolve_device(device)
    image_size = image_size or run_image_size(checkpoints, trust_code) or 224
    started = time.time()

    data = [load_data(spec, image_size) for spec in datasets]
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    for spec in checkpoints:
        name, backbone = load_benchmark_backbone(spec, checkpoints, seed, trust_code)
        curve = read_knn_curve(spec) if not str(spec).startswith("random") else []
        if curve:
            curves[name] = curve
        for data_name, train_set, test_set in data:
            tic = time.perf_counter()
            cached = all(
                feature_cache_path(backbone, ds, cache_dir, image_size, dev).is_file() for ds in (train_set, test_set)
            )
            (train_x, train_y), (test_x, test_y) = (
                extract_features(backbone, ds, batch_size, image_size, dev, cache_dir, progress=progress)
                for ds in (train_set, test_set)
            )
            row: dict[str, Any] = {
                "checkpoint": name,
                "dataset": data_name,
                "train": len(train_set),
                "test": len(test_set),
                "classes": 1 + int(max(train_y.max(), test_y.max())),
            }
            if kind == "knn":
                metrics = knn(
                    train_x, train_y, test_x, test_y, k=[min(kk, len(train_x)) for kk in ks], temperature=temperature
                )
                first = min(ks[0], len(train_x))
                row.update(top1=metrics[f"top1@k{first}"], top5=metrics[f"top5@k{first}"], **metrics)
            else:
                options = {"seed": seed, "progress": progress, "device": dev, **(probe_options or {})}
                log_dir = out_dir / "tensorboard" / slug(name) / slug(data_name)
                metrics = linear_probe(train_x, train_y, test_x, test_y, log_dir=log_dir, **options)
                row.update(
                    {
                        key: metrics.get(key)
                        for key in (
                            "top1",
                            "top5",
                            "solver",
                            "selection",
                            "C",
                            "lr",
                            "weight_decay",
                            "val_top1",
                            "best_epoch",
                        )
                    }
                )
                row["sweep"] = metrics["sweep"]
            row["features"] = "cached" if cached else "computed"
            row["seconds"] = round(time.perf_counter() - tic, 3)
            rows.append(row)
            echo(
                f"{name} on {data_name}: top-1 {row['top1']:.2f}%  ({row['features']} features, {row['seconds']:.1f}s)"
            )

    payload: dict[str, Any] = {
        "kind": kind,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.time() - started, 1),
        "settings": {
            "image_size": image_size,
            "device": str(dev),
            "batch_size": batch_size,
            **(
                {"k": ks, "temperature": temperature}
                if kind == "knn"
                else {"probe_options": jsonable(probe_options or {})}
            ),
        },
        "environment": environment(dev),
        "rows": rows,
        "summary": summarize(rows),
        "curves": {name: [{"epoch": e, "knn/top1": v} for e, v in curve] for name, curve in curves.items()},
    }
    payload["files"] = write_tables(payload, out_dir)
    if plots:
        payload["files"] += write_plots(payload, out_dir)
        (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    echo(markdown_table(payload))
    echo("wrote " + ", ".join(str(out_dir / f) for f in payload["files"]))
    return payload


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``benchmark knn``, ``benchmark linear-probe`` and ``benchmark finetune`` (``run=`` handler)."""
    bench = subparsers.add_parser(
        "benchmark",
        help="kNN / linear-probe / fine-tuning benchmark of checkpoints x datasets, with tables and plots",
        description="Evaluate one or more checkpoints on one or more labelled datasets; print a results table and "
        "write results.md/.csv/.json and PNG plots under --out, with a transfer-suite summary "
        "(mean top-1 and mean rank per checkpoint). Features are cached, so reruns skip the backbone.",
    )
    sub = bench.add_subparsers(dest="benchmark_command", required=True, metavar="{knn,linear-probe,finetune}")
    for kind, help_text in (
        ("knn", "FAISS kNN on frozen features"),
        ("linear-probe", "linear probe on cached features: L-BFGS over Cs picked by k-fold"),
    ):
        p = sub.add_parser(kind, help=help_text, description=f"{help_text}. " + (bench.description or ""))
        p.add_argument(
            "--checkpoint",
            action="append",
            required=True,
            help="run directory, checkpoint file, .safetensors export, zoo name, 'random' (random weights of "
            "the first checkpoint's backbone) or 'random:BACKBONE'; repeat for several",
        )
        p.add_argument(
            "--data",
            action="append",
            default=None,
            help="labelled dataset spec: elpv, elpv:type, PATH (ImageFolder), cifar10:PATH, ...; repeat for a "
            "transfer suite (default: elpv)",
        )
        p.add_argument("--out", default=None, help=f"output directory (default: runs/benchmark-{kind})")
        p.add_argument(
            "--image-size",
            type=positive_int,
            default=None,
            help="backbone input size (default: the first run's augment.image_size, else 224)",
        )
        p.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
        p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
        p.add_argument("--cache-dir", default=None, help="feature cache (default: OUT/feature_cache)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random baselines and the probe's split")
        p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
        if kind == "knn":
            p.add_argument(
                "--k",
                type=positive_int,
                nargs="+",
                default=[200, 20],
                help="neighbours; several values come from one search, the first is the headline (default: 200 20)",
            )
            p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
        else:
            p.add_argument(
                "--solver",
                choices=("auto", "lbfgs", "sgd"),
                default="auto",
                help="probe solver: full-batch L-BFGS over Cs, or the minibatch SGD sweep (default auto: "
                "L-BFGS unless an SGD option is given or the features are too many)",
            )
            p.add_argument(
                "--Cs",
                dest="cs",
                type=float,
                nargs="+",
                default=None,
                help="L-BFGS: inverse regularisation strengths, scikit-learn's C (default: 1e-4 ... 100, one per decade)",
            )
            p.add_argument(
                "--folds", type=positive_int, default=5, help="L-BFGS: k-fold picking C below 20k samples (default 5)"
            )
            p.add_argument("--epochs", type=positive_int, default=None, help="SGD: maximum probe epochs (default 100)")
            p.add_argument(
                "--lrs",
                type=float,
                nargs="+",
                default=None,
                help="SGD: learning rates of the sweep (default: 0.01 0.03 0.1 0.3 1)",
            )
            p.add_argument(
                "--weight-decays",
                type=float,
                nargs="+",
                default=None,
                help="SGD: weight decays of the sweep (default: 0 1e-5 1e-4 1e-3 1e-2 1e-1)",
            )
            p.add_argument(
                "--optimizer", choices=PROBE_OPTIMIZERS, default=None, help="SGD: probe optimizer (default sgd)"
            )
            p.add_argument(
                "--probe-batch-size",
                type=positive_int,
                default=1024,
                help="SGD: features per probe step (default 1024)",
            )
        p.set_defaults(run=_run_cli, benchmark_kind=kind)
    add_finetune_parser(sub)  # fine-tuning trains the backbones: its own options and table


def _run_cli(args: argparse.Namespace) -> int:
    probe = None
    if args.benchmark_kind == "linear-probe":
        probe = {"solver": args.solver, "folds": args.folds, "batch_size": args.probe_batch_size}
        for option in ("epochs", "optimizer"):
            if getattr(args, option) is not None:
                probe[option] = getattr(args, option)
        if args.cs:
            probe["Cs"] = tuple(args.cs)
        if args.lrs:
            probe["lrs"] = tuple(args.lrs)
        if args.weight_decays:
            probe["weight_decays"] = tuple(args.weight_decays)
    run_benchmark(
        args.benchmark_kind,
        args.checkpoint,
        args.data or ["elpv"],
        args.out or f"runs/benchmark-{args.benchmark_kind}",
        image_size=args.image_size,
        device=args.device,
        batch_size=args.batch_size,
        k=getattr(args, "k", (200, 20)),
        temperature=getattr(args, "temperature", 0.07),
        probe_options=probe,
        cache_dir=args.cache_dir,
        plots=not args.no_plots,
        seed=args.seed,
        progress=not args.no_progress,
        command=_command_line(args),
        trust_code=args.trust_code,
    )
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The benchmark command as typed, rebuilt from the parsed options (recorded in the results)."""
    words = ["visionssl", "benchmark", args.benchmark_kind]
    words += [w for c in args.checkpoint for w in ("--checkpoint", c)]
    words += [w for d in args.data or [] for w in ("--data", d)]
    for option in (
        "out",
        "image_size",
        "device",
        "batch_size",
        "cache_dir",
        "seed",
        "temperature",
        "solver",
        "folds",
        "epochs",
        "optimizer",
        "probe_batch_size",
    ):
        value = getattr(args, option, None)
        if value is not None:
            words += [f"--{option.replace('_', '-')}", str(value)]
    for option in ("k", "cs", "lrs", "weight_decays"):
        if getattr(args, option, None):
            words += ["--Cs" if option == "cs" else f"--{option.replace('_', '-')}", *map(str, getattr(args, option))]
    words += [f"--{flag.replace('_', '-')}" for flag in ("no_plots", "no_progress") if getattr(args, flag)]
    return " ".join(shlex.quote(w) for w in words)
