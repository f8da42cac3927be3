"""The tables of ``methods_elpv.py``: one run's rows (``save``) and every seed's gains (``summarize_seeds``).

The results folder is read from ``_common.RESULTS`` when a table is written (tests point it elsewhere).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import _common


def save(results: str, rows: dict, budget: dict, random_top1: float, spread: dict, device: str, k: int) -> Path:
    """Writes the JSON and the Markdown table (methods in name order)."""
    ordered = [rows[m] for m in sorted(rows)]
    path = _common.write_results(
        results,
        {
            "device": device,
            "budget": budget,
            "random_knn_top1": random_top1,
            "random_knn_top1_over_seeds": spread,
            "results": ordered,
        },
    )
    seeds, cvs = spread["seeds"], spread.get("cross_validated") or []

    def train_4fold(r: dict) -> str:  # rows written before the column existed leave it empty
        return f"{r['train_4fold_top1']:.2f} ({r['train_4fold_gain']:+.2f})" if "train_4fold_top1" in r else ""

    lines = [
        "| method | kNN top-1 (%) | vs random | 4-fold on train (vs random) | precision | epochs | train time (s) | machine |",
        "|---|---|---|---|---|---|---|---|",
        f"| random weights (seed {budget['seed']}, every {budget['backbone']} row's initialisation) | {random_top1:.2f} | | "
        f"{cvs[0] if cvs else float('nan'):.2f} | | | | |",
    ]
    if len(seeds) > 1:
        lines.append(
            f"| random weights, {len(seeds)} seeds: mean +- std | {spread['mean']:.2f} +- {spread['std']:.2f} "
            f"({min(seeds):.2f}-{max(seeds):.2f}) | | "
            f"{statistics.mean(cvs) if cvs else float('nan'):.2f} ({min(cvs or [0]):.2f}-{max(cvs or [0]):.2f}) | | | | |"
        )
    for label in sorted({r["backbone"] for r in ordered if "backbone" in r}):  # rows on another backbone: its own init
        own = [r for r in ordered if r.get("backbone") == label]
        top1, sp = own[0]["random_knn_top1"], own[0]["random_knn_top1_over_seeds"]
        lines.append(
            f"| random weights, {label} (seed {budget['seed']}, the initialisation of "
            f"{', '.join(r['method'] for r in own)}) | {top1:.2f} | | {sp['cross_validated'][0]:.2f} | | | | |"
        )
        if len(sp["seeds"]) > 1:
            lines.append(
                f"| random weights, {label}, {len(sp['seeds'])} seeds: mean +- std | {sp['mean']:.2f} +- "
                f"{sp['std']:.2f} ({min(sp['seeds']):.2f}-{max(sp['seeds']):.2f}) | | "
                f"{statistics.mean(sp['cross_validated']):.2f} ({min(sp['cross_validated']):.2f}-"
                f"{max(sp['cross_validated']):.2f}) | | | | |"
            )
    lines += [
        f"| {r['method']}{' on ' + r['backbone'] if 'backbone' in r else ''} | {r['knn_top1']:.2f} | {r['gain_over_random']:+.2f} | {train_4fold(r)} | {r['precision']} | "
        f"{r['epochs_done']} | {r['train_seconds']:.0f}{' (resumed: this part only)' if r.get('resumed') else ''} | {r.get('device', '?')}, torch {r.get('torch', '?')} |"
        for r in ordered
    ]
    b = budget
    notes = [f"{r['method']} ran with `--set {' '.join(r['set'])}`." for r in ordered if r.get("set")]
    (_common.RESULTS / f"{results}.md").write_text(
        f"elpv defect labels, kNN (k={k}) on frozen features; {b['backbone']} at {b['image_size']} px, batch "
        f"{b['batch_size']}, {b['epochs']} epochs, seed {b['seed']}; random weights scored on {device}.\n\n"
        + "\n".join(lines)
        + "\n"
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
    )
    return path


def mean_std(values: list[float]) -> str:
    """``+1.23 +- 0.45`` (the sample standard deviation over seeds), ``+1.23`` for one value, ``-`` for none."""
    if not values:
        return "-"
    return f"{statistics.mean(values):+.2f}" + (f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def summarize_seeds() -> Path:
    """Per method, each seed's gain over its own initialisation (test split and 4-fold train kNN) and the means."""
    files = [_common.RESULTS / "methods_elpv.json"] + sorted(_common.RESULTS.glob("methods_elpv_seed[0-9]*.json"))
    runs = [json.loads(f.read_text()) for f in files if f.exists()]
    gains: dict[str, dict[int, tuple[float, float | None]]] = {}
    for run in runs:
        for r in run["results"]:
            gains.setdefault(r["method"], {})[run["budget"]["seed"]] = (
                r["gain_over_random"],
                r.get("train_4fold_gain"),
            )
    seeds = sorted({run["budget"]["seed"] for run in runs})
    lines = [
        "| method | "
        + " | ".join(f"seed {s}: test / 4-fold" for s in seeds)
        + " | test gain: mean +- std | 4-fold gain: mean +- std | seeds |",
        "|---|" + "---|" * (len(seeds) + 3),
    ]
    summary = {}
    for method in sorted(gains):
        per = gains[method]
        tests = [t for t, _ in per.values()]
        folds = [f for _, f in per.values() if f is not None]
        cells = [
            (f"{per[s][0]:+.2f} / " + (f"{per[s][1]:+.2f}" if per[s][1] is not None else "-")) if s in per else ""
            for s in seeds
        ]
        summary[method] = {
            "test_gains": {s: per[s][0] for s in per},
            "train_4fold_gains": {s: per[s][1] for s in per},
            "mean_test_gain": statistics.mean(tests),
            "std_test_gain": statistics.stdev(tests) if len(tests) > 1 else None,
            "mean_train_4fold_gain": statistics.mean(folds) if folds else None,
            "std_train_4fold_gain": statistics.stdev(folds) if len(folds) > 1 else None,
        }
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean_std(tests)} | {mean_std(folds)} | {len(per)} |")
    path = _common.write_results("methods_elpv_seeds", {"seeds": seeds, "methods": summary})
    (_common.RESULTS / "methods_elpv_seeds.md").write_text(
        "elpv defect labels, kNN (k=20): each method's gain in points over its own untrained initialisation (the same "
        "seed), on the test split (654 queries) and by 4-fold kNN over the train split (1,970 queries). Gathered by "
        "`python benchmarks/methods_elpv.py --summarize-seeds` from methods_elpv.json and methods_elpv_seed<N>.json.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return path
