"""One-seed controls of the small recipes on data they were not tuned on: visionssl's side only, one row a run.

Each run pretrains the method's small recipe as the CLI gives it (plus ``--set`` overrides) at the budget of
``benchmarks/methods_peer.py`` on a dataset that is not elpv (scikit-learn's ``digits`` by default), then scores
the backbone and its untrained initial weights with the same kNN (top-1 on the test split, bank: the train
split), the effective rank of their test features, and keeps the loss every third epoch. It covers every
registered method (the pretext and clustering ones too, which LightlySSL has no loop for). Rows are added to
``benchmarks/results/recipe_controls_small.json`` with the commit they ran at, and its table is rewritten.

    python benchmarks/recipe_controls.py --methods deepcluster --seeds 0 1 2 --backbone peer_cnn --batch-size 128
    python benchmarks/recipe_controls.py --methods swav --set augment.kwargs.num_local=6
    python benchmarks/recipe_controls.py --methods simclr --epochs 1 --max-images 64 --batch-size 16 --results dry
    python benchmarks/recipe_controls.py --methods deepcluster --dataset shapes:2000 --eval-split holdout  # last
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import device_name  # noqa: E402
from methods_elpv import knn_scores, stratified_folds  # noqa: E402
from methods_peer import feature_rank, load_data, run_curves, train_visionssl  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.backbones.features import resolve_device  # noqa: E402

TABLE_HEADER = (
    "| dataset | backbone | batch | method | seed | overrides | kNN top-1 (/ 4-fold) | untrained | "
    "feature rank (untrained) | loss, every 3rd epoch |\n|---|---|---|---|---|---|---|---|---|---|"
)

SUMMARY_TITLE = "## Over seeds"
RUNS_TITLE = "## Every run"


def commit() -> str:
    """The short commit of the checkout (the recipe a row ran with), ``+dirty`` when the package or its recipes
    differ from it (the row did not run that commit's recipe), or ``"unknown"`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()

    try:
        head, changed = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--", "../visionssl")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if changed else "")


def score_label(row: dict) -> str:
    """The dataset label a row's kNN score is under (its ``ours`` scores hold that label and ``rank``)."""
    return next(k for k in row["ours"] if k not in ("rank", "fold4"))


def score_text(scores: dict, label: str) -> str:
    """The test kNN top-1, and the 4-fold kNN over the train split after it where the row has it (newer rows)."""
    return f"{scores[label]:.2f}" + (f" / {scores['fold4']:.2f}" if "fold4" in scores else "")


def table_row(row: dict) -> str:
    """One markdown line of a result row."""
    sets = " ".join(row["sets"]) or "(recipe)"
    if row.get("commit"):
        sets += f" (at {row['commit']})"
    ours, untrained, label = row["ours"], row["untrained"], score_label(row)
    rank = "-" if ours.get("rank") is None else ours["rank"]
    loss = " ".join(str(x) for x in row["loss"])
    return (
        f"| {row['ds']} | {row['bb']} | {row['batch']} | {row['method']} | {row['seed']} | {sets} | "
        f"{score_text(ours, label)} | {score_text(untrained, label)} | {rank} ({untrained.get('rank', '-')}) | {loss} |"
    )


def seed_summary(rows: list[dict]) -> str:
    """Mean +- population std over seeds of every (dataset, backbone, batch, method, overrides) with more than one
    seed, next to the untrained start's mean and range, and the commits the runs took their recipe from."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["ds"], r["bb"], r["batch"], r["method"], " ".join(r["sets"]) or "(recipe)"), []).append(r)
    lines = [
        "| dataset | backbone | batch | method | overrides | seeds | kNN top-1 | untrained | untrained range | "
        "4-fold kNN (untrained) | at |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, bb, batch, method, sets), group in groups.items():
        if len({r["seed"] for r in group}) < 2:
            continue
        label = score_label(group[0])
        ours = [r["ours"][label] for r in group]
        untrained = [r["untrained"][label] for r in group]
        commits = ", ".join(dict.fromkeys(r.get("commit") or "-" for r in group))
        fold4 = "-"
        if all("fold4" in r["ours"] for r in group):  # the steadier figure: 4-fold kNN over the train split
            ours4, untrained4 = [r["ours"]["fold4"] for r in group], [r["untrained"]["fold4"] for r in group]
            fold4 = (
                f"{statistics.mean(ours4):.2f} +- {statistics.pstdev(ours4):.2f} ({statistics.mean(untrained4):.2f})"
            )
        lines.append(
            f"| {ds} | {bb} | {batch} | {method} | {sets} | {len(group)} | {statistics.mean(ours):.2f} +- "
            f"{statistics.pstdev(ours):.2f} | {statistics.mean(untrained):.2f} | {min(untrained):.2f}-"
            f"{max(untrained):.2f} | {fold4} | {commits} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def write_table(path: Path, rows: list[dict]) -> None:
    """Rewrites the tables of ``path`` (the text above them is kept) from ``rows``: the seeds' summary, then every run."""
    head = (
        path.read_text().split(SUMMARY_TITLE)[0].split(TABLE_HEADER)[0]
        if path.exists()
        else "# Small-recipe controls\n\n"
    )
    summary = seed_summary(rows)
    summary = f"{SUMMARY_TITLE}\n\n{summary}\n\n{RUNS_TITLE}\n\n" if summary else ""
    path.write_text(head + summary + TABLE_HEADER + "\n" + "\n".join(table_row(r) for r in rows) + "\n")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", required=True, choices=vs.list_methods())
    parser.add_argument("--dataset", default="digits", help="digits or shapes[:N] (methods_peer.py's sets, not elpv)")
    parser.add_argument("--backbone", default="peer_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the recipe")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N train/test images (dry runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/recipe_controls")
    parser.add_argument("--results", default="recipe_controls_small", help="results file name under results/")
    parser.add_argument(
        "--eval-split",
        default="test",
        choices=("test", "holdout"),
        help="queries of the kNN; holdout: the shapes set's split never tuned on (report on it last)",
    )
    args = parser.parse_args(argv)
    dataset = args.dataset.split(":")[0]
    if dataset not in ("digits", "shapes"):
        parser.error(f"--dataset must be digits or shapes[:N] (data no recipe was tuned on), got {args.dataset!r}")
    if args.eval_split == "holdout" and dataset != "shapes":
        parser.error(f"--eval-split holdout: {dataset} has no holdout split (shapes[:N] has)")
    args.plain_recipe = True  # what methods_peer's helpers read
    device = resolve_device(args.device)
    stored = math.ceil(args.image_size * 1.125)
    labels, data = load_data(args, dataset, stored)
    train, test = data[labels[0]]
    folds = stratified_folds(train.targets.numpy(), 4, seed=0)
    budget = {
        "image_size": args.image_size,
        "stored_size": stored,
        "epochs": args.epochs,
        "k": args.k,
        "warmup_epochs": 1,
        "recipe": "plain",
        **({"max_images": args.max_images} if args.max_images else {}),
    }
    path = _common.RESULTS / f"{args.results}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"budget": budget, "rows": []}
    payload = {k: v for k, v in payload.items() if k not in ("date", "versions")}  # write_results sets them anew
    if payload["budget"] != budget:
        parser.error(
            f"results/{args.results}.json holds rows of the budget {payload['budget']}, not {budget}: name "
            "another --results"
        )
    payload["device"] = device_name(device)
    for method in args.methods:
        for seed in args.seeds:
            # a fresh run directory for every run: runs of the same method and seed at other budgets never mix
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run = argparse.Namespace(**{**vars(args), "out": f"{args.out}/{args.backbone}-b{args.batch_size}-{stamp}"})
            at = commit()  # before training: the recipe the run reads
            trainer = train_visionssl(method, train, test, run, seed, device, stored)
            initial = copy.deepcopy(trainer.method.backbone).cpu()
            start = time.perf_counter()
            _common.fit_to_the_end(trainer)
            seconds = time.perf_counter() - start
            scores = {}
            for side, backbone in (("ours", trainer.method.backbone), ("untrained", initial)):
                top1, fold4 = knn_scores(backbone, train, test, None, folds, args.image_size, min(args.k, len(train)))
                scores[side] = {
                    labels[0]: round(top1, 2),
                    "fold4": round(fold4, 2),
                    "rank": round(feature_rank(backbone, test, args.image_size), 1),
                }
            row = {
                "ds": args.dataset + (" (holdout)" if args.eval_split == "holdout" else ""),
                "bb": args.backbone,
                "batch": str(args.batch_size),
                "method": method,
                "seed": str(seed),
                "sets": list(args.set),
                "sec": round(seconds),
                **scores,
                "loss": [round(x, 3) for x in run_curves(trainer.out)["loss_curve"][::3]],
                "commit": at,
            }
            if path.exists():  # re-read: another run may have added rows to the same file meanwhile
                payload["rows"] = json.loads(path.read_text())["rows"]
            payload["rows"].append(row)
            print(table_row(row), flush=True)
            path = _common.write_results(args.results, payload)
            write_table(path.with_suffix(".md"), payload["rows"])
    return path


if __name__ == "__main__":
    main()
