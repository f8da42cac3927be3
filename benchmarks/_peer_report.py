"""The results of ``methods_peer.py``: mean and spread over seeds, the markdown table, the files written."""

from __future__ import annotations

import statistics
from pathlib import Path

from _common import write_results
from _lightly_peer import OPTIMIZER_NAMES, optimizer_of

LABELS = ("defect", "type")
DATASET_LABELS = {
    "elpv": LABELS,
    "shapes": ("shape", "texture"),
    "digits": ("digit",),
}  # the first label is the one the table leads with
ADAM_LR = 1e-3  # LightlySSL's SwAV and DINO examples' Adam


def summarize(rows: list[dict]) -> dict:
    """Mean and population std over seeds of every (method, side, label, score)."""
    out: dict = {}
    for r in rows:
        for key, value in r["scores"].items():
            out.setdefault(r["method"], {}).setdefault(r["side"], {}).setdefault(key, []).append(value)
    return {
        m: {
            side: {k: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "n": len(v)} for k, v in scores.items()}
            for side, scores in sides.items()
        }
        for m, sides in out.items()
    }


def markdown(summary: dict, budget: dict, device: str, rows: list[dict] = ()) -> str:
    dataset = budget.get("dataset", "elpv")
    split = budget.get("eval_split", "test")
    lines = [
        f"# visionssl vs LightlySSL at equal budget on {dataset} ({device})",
        "",
        f"Budget: {budget}. kNN top-1 (%) on the {split} split, mean +- std over seeds; gap = visionssl - LightlySSL.",
        "",
        "| method | label | visionssl | LightlySSL | gap | untrained (same weights) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, sides in summary.items():
        for label in DATASET_LABELS[dataset.partition(":")[0]]:
            ours, peer = sides.get("visionssl", {}).get(label), sides.get("lightly", {}).get(label)
            if ours is None or peer is None:
                continue
            init = sides.get("untrained", {}).get(label)
            init = f"{init['mean']:.2f} +- {init['std']:.2f}" if init else ""
            lines.append(
                f"| {method} | {label} | {ours['mean']:.2f} +- {ours['std']:.2f} | {peer['mean']:.2f} +- "
                f"{peer['std']:.2f} | {ours['mean'] - peer['mean']:+.2f} | {init} | {ours['n']} |"
            )
    retried: dict = {}  # method -> {lr: seeds}: LightlySSL runs that diverged at their first rate and were retried
    for r in rows:
        first = peer_rate(r["method"], budget)
        if r["side"] == "lightly" and r.get("peer_lr", first) != first:
            retried.setdefault(r["method"], {}).setdefault(r["peer_lr"], []).append(r["seed"])
    for method, lrs in retried.items():
        for lr, seeds in lrs.items():
            lines.append(
                f"\nLightlySSL {method}: {OPTIMIZER_NAMES[optimizer_of(method)]} lr {lr:g} at seeds "
                f"{', '.join(map(str, sorted(seeds)))} (its loss went non-finite at {peer_rate(method, budget):g})."
            )
    curves = [r for r in rows if r.get("loss_curve")]
    if curves:
        lines += [
            "",
            "Loss per epoch (ln K: what a contrastive loss reads when nothing is learnt) and the effective rank of the "
            "test features (centred; untrained in brackets):",
            "",
            "| method | seed | side | loss per epoch | ln K | feature rank |",
            "|---|---|---|---|---|---|",
        ]
        start = {(r["method"], r["seed"]): r.get("feature_rank") for r in rows if r["side"] == "untrained"}
        for r in curves:
            chance = f"{r['loss_chance']:.2f}" if r.get("loss_chance") else "-"
            rank, init = r.get("feature_rank"), start.get((r["method"], r["seed"]))
            rank = (f"{rank:.1f}" if rank is not None else "-") + (f" ({init:.1f})" if init is not None else "")
            curve = " ".join(f"{v:.3f}" for v in r["loss_curve"])
            lines.append(f"| {r['method']} | {r['seed']} | {r['side']} | {curve} | {chance} | {rank} |")
    return "\n".join(lines) + "\n"


def peer_rate(method: str, budget: dict) -> float:
    """The LightlySSL side's first learning rate for ``method``: ``--peer-lr`` (SGD) or ``--peer-adam-lr``."""
    return budget["peer_lr"] if optimizer_of(method) == "sgd" else budget.get("peer_adam_lr", ADAM_LR)


def save(name: str, rows: list[dict], budget: dict, device: str, lightly_version: str) -> Path:
    """Writes results/<name>.json (every row, the summary) and its table, <name>.md."""
    budget = {**budget, "seeds": sorted({r["seed"] for r in rows})}
    summary = summarize(rows)
    payload = {"device": device, "lightly": lightly_version, "budget": budget, "summary": summary, "rows": rows}
    path = write_results(name, payload)
    path.with_suffix(".md").write_text(markdown(summary, budget, device, rows))
    return path
