"""The benchmark's report: the transfer-suite summary, the Markdown / CSV / JSON tables and the plots.

``visionssl benchmark`` (``visionssl.cli.benchmark.run_benchmark``) evaluates checkpoints x datasets and hands
the rows here. Everything here works on plain result dictionaries.

Example:
    >>> rows = [{"checkpoint": "a", "dataset": "d", "top1": 80.0}, {"checkpoint": "b", "dataset": "d", "top1": 60.0}]
    >>> [(s["checkpoint"], s["mean_rank"]) for s in summarize(rows)]
    [('a', 1.0), ('b', 2.0)]
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["jsonable", "markdown_table", "read_knn_curve", "slug", "summarize", "write_plots", "write_tables"]


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One transfer-suite score per checkpoint: mean top-1 over datasets and mean rank (1 = best).

    Example:
        >>> rows = [{"checkpoint": "a", "dataset": "x", "top1": 90.0}, {"checkpoint": "b", "dataset": "x", "top1": 80.0},
        ...         {"checkpoint": "a", "dataset": "y", "top1": 50.0}, {"checkpoint": "b", "dataset": "y", "top1": 50.0}]
        >>> [(s["checkpoint"], s["mean_top1"], s["mean_rank"]) for s in summarize(rows)]
        [('a', 70.0, 1.25), ('b', 65.0, 1.75)]
    """
    names = list(dict.fromkeys(r["checkpoint"] for r in rows))
    ranks: dict[str, list[float]] = {n: [] for n in names}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        scores = {r["checkpoint"]: r["top1"] for r in rows if r["dataset"] == dataset}
        for name, score in scores.items():
            better = sum(s > score for s in scores.values())
            equal = sum(s == score for s in scores.values())
            ranks[name].append(better + (equal + 1) / 2)  # ties share the average of their ranks
    summary = [
        {
            "checkpoint": n,
            "datasets": len(ranks[n]),
            "mean_top1": round(sum(r["top1"] for r in rows if r["checkpoint"] == n) / len(ranks[n]), 4),
            "mean_rank": round(sum(ranks[n]) / len(ranks[n]), 4),
        }
        for n in names
    ]
    return sorted(summary, key=lambda s: (s["mean_rank"], -s["mean_top1"]))


def markdown_table(payload: dict[str, Any]) -> str:
    """The results (checkpoint x dataset) and the summary as Markdown tables.

    Top-5 shows "-" for datasets of at most 5 classes (it is 100% there); the JSON and CSV keep the number.
    """
    kind, rows = payload["kind"], payload["rows"]
    if kind == "knn":
        metrics = [c for c in rows[0] if c.startswith("top") and "@" in c]
        headline = f"top-1 at k={payload['settings']['k'][0]}"
    else:
        metrics, headline = ["top1", "top5", "solver", "selection", "C", "lr", "weight_decay", "val_top1"], "top-1"
    cols = ["checkpoint", "dataset"] + metrics + ["features"]
    title = "kNN" if kind == "knn" else "Linear probe"
    lines = [f"### {title} accuracy (%)", "", _md_row(cols), _md_row(["---"] * len(cols))]
    for r in rows:
        few_classes = r.get("classes", 6) <= 5
        lines.append(_md_row(["-" if few_classes and c.startswith("top5") else _fmt(r.get(c)) for c in cols]))
    lines += [
        "",
        f"### Transfer-suite summary ({headline})",
        "",
        _md_row(["checkpoint", "datasets", "mean top-1", "mean rank"]),
        _md_row(["---"] * 4),
    ]
    lines += [
        _md_row([s["checkpoint"], s["datasets"], _fmt(s["mean_top1"]), _fmt(s["mean_rank"])])
        for s in payload["summary"]
    ]
    return "\n".join(lines)


def read_knn_curve(spec: str | Path) -> list[tuple[float, float]]:
    """(epoch, knn/top1) pairs from the ``metrics.jsonl`` of a run directory (or of the run a checkpoint file
    belongs to); empty when there is none.

    Example:
        >>> import json, tempfile, pathlib
        >>> run = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 3.0}) + "\\n"
        ...                                         + json.dumps({"epoch": 2, "knn/top1": 61.5}) + "\\n")
        >>> read_knn_curve(run)
        [(2.0, 61.5)]
    """
    path = Path(spec)
    if not path.exists():
        return []
    candidates = [path] if path.is_dir() else [path.parent, path.parent.parent]
    for run in candidates:
        metrics = run / "metrics.jsonl"
        if metrics.is_file():
            curve = []
            for line in metrics.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
                if "knn/top1" in record and "epoch" in record:
                    curve.append((float(record["epoch"]), float(record["knn/top1"])))
            return curve
    return []


def write_tables(payload: dict[str, Any], out_dir: Path) -> list[str]:
    """Writes results.md, results.csv and results.json under ``out_dir``; returns their names."""
    rows = payload["rows"]
    header = f"# {payload['kind']} benchmark\n\n"
    if payload.get("command"):
        header += f"Made by `{payload['command']}` on {payload['environment']['device']}, {payload['date']}.\n\n"
    (out_dir / "results.md").write_text(header + markdown_table(payload) + "\n")
    columns = list(dict.fromkeys(c for r in rows for c in r if c != "sweep"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (out_dir / "results.csv").write_text(buf.getvalue())
    files = ["results.md", "results.csv", "results.json"]
    (out_dir / "results.json").write_text(json.dumps({**payload, "files": files}, indent=2) + "\n")
    return files


def write_plots(payload: dict[str, Any], out_dir: Path) -> list[str]:
    """Writes accuracy.png (and knn_over_epochs.png when runs logged online kNN); returns their names."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "the benchmark plots need matplotlib: pip install matplotlib (or visionssl[bench]); "
            "or pass --no-plots (plots=False). The tables were written."
        ) from None
    rows, files = payload["rows"], []
    names = list(dict.fromkeys(r["checkpoint"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = Figure(figsize=(max(6.0, 1.6 * len(datasets) * max(1, len(names)) ** 0.5), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        scores = {r["dataset"]: r["top1"] for r in rows if r["checkpoint"] == name}
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(datasets))]
        bars = ax.bar(xs, [scores.get(d, float("nan")) for d in datasets], width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylim(0, 105)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{'kNN' if payload['kind'] == 'knn' else 'linear probe'} top-1 per checkpoint and dataset")
    fig.legend(loc="outside lower center", ncols=min(3, len(names)), fontsize=8)
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    files.append("accuracy.png")
    if payload["curves"]:
        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.subplots()
        for name, points in payload["curves"].items():
            ax.plot([p["epoch"] for p in points], [p["knn/top1"] for p in points], marker="o", label=name)
        ax.set_xlabel("pretraining epoch")
        ax.set_ylabel("online kNN top-1 (%)")
        ax.set_title("kNN accuracy over pretraining (from metrics.jsonl)")
        fig.legend(loc="outside lower center", ncols=min(3, len(payload["curves"])), fontsize=8)
        fig.savefig(out_dir / "knn_over_epochs.png", dpi=120)
        files.append("knn_over_epochs.png")
    return files


def jsonable(obj: Any) -> Any:
    """``obj`` with anything JSON cannot hold turned into its ``str``."""
    return json.loads(json.dumps(obj, default=str))


def _md_row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.0e}"
    return "" if value is None else str(value)


def slug(text: str) -> str:
    """``text`` as a file name: letters, digits, ``-_.``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "x"
