"""The pretext methods judged at every stage of their backbone, as their papers judge them.

RotNet reports conv block 2, VISSL and mmselfsup evaluate ResNet's res2-res5: a pretext task's last stage
specialises in the task, so its best features are often in a middle stage. This reads the runs that
``benchmarks/methods_elpv.py`` leaves under ``--runs`` (one per method, e.g. ``runs/methods_elpv/rotation``)
and scores kNN on elpv's defect labels (test split, and 4-fold over the train split, as the methods table)
at every stage of the trained backbone and of its untrained initialisation (the same seed), so each stage's
gain is over the same stage of the same starting weights.

    python benchmarks/methods_elpv.py --methods rotation jigsaw context   # trains the runs
    python benchmarks/pretext_stages.py                                   # -> results/pretext_stages.{json,md}
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, write_results  # noqa: E402
from methods_elpv import knn_scores, stratified_folds  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.engine.checkpoint import load_checkpoint  # noqa: E402
from visionssl.eval.layers import stage_names  # noqa: E402

PRETEXT = ("rotation", "jigsaw", "context")


def stage_scores(method: str, run: Path, train, test, folds, image_size: int, k: int) -> dict:
    """Per stage: kNN (test, 4-fold) of the run's backbone and of its initialisation, and the best stage."""
    cfg = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    torch.manual_seed(cfg["train"]["seed"])  # as the trainer seeds before the method builds its backbone
    initial = vs.create_backbone(cfg["backbone"]["name"], **cfg["backbone"].get("kwargs", {}))
    trained = vs.zoo.load_backbone(run)
    stages = {}
    for layer in stage_names(trained):
        test_t, cv_t = knn_scores(trained, train, test, None, folds, image_size, k, layer)
        test_r, cv_r = knn_scores(initial, train, test, None, folds, image_size, k, layer)
        stages[layer] = {"test": test_t, "4fold": cv_t, "random_test": test_r, "random_4fold": cv_r}
        print(
            f"{method:9s} {layer:7s} test {test_t:6.2f} ({test_t - test_r:+.2f})  4-fold {cv_t:6.2f} ({cv_t - cv_r:+.2f})"
        )
    best = max(stages, key=lambda s: stages[s]["4fold"])  # chosen on the train split: the test split stays unseen
    return {
        "method": method,
        "run": str(run),
        "seed": cfg["train"]["seed"],
        "epochs": cfg["train"]["epochs"],
        "stages": stages,
        "best_stage": best,
    }


def markdown(rows: list[dict], device: str, image_size: int, k: int) -> str:
    lines = [
        f"elpv defect labels, kNN (k={k}) at {image_size} px on every stage (global average pooled) of each pretext "
        f"run and of its untrained initialisation; gain over the same stage of the initialisation; best stage "
        f"picked by the 4-fold score on the train split. {device}.",
        "",
        "| method (epochs, seed) | stage | test top-1 (gain) | 4-fold on train (gain) | |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for layer, s in r["stages"].items():
            mark = "best" if layer == r["best_stage"] else ("final" if layer == "final" else "")
            lines.append(
                f"| {r['method']} ({r.get('epochs')}, {r['seed']}) | {layer} | {s['test']:.2f} "
                f"({s['test'] - s['random_test']:+.2f}) "
                f"| {s['4fold']:.2f} ({s['4fold'] - s['random_4fold']:+.2f}) | {mark} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(PRETEXT))
    parser.add_argument("--runs", default="runs/methods_elpv", help="the folder holding one run per method")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--results", default="pretext_stages")
    args = parser.parse_args(argv)
    stored = math.ceil(args.image_size * 1.125)
    train, test = vs.data.load_dataset("elpv", "train", stored), vs.data.load_dataset("elpv", "test", stored)
    folds = stratified_folds((train.targets * 2 + train.labels["type"]).numpy(), 4, seed=0)  # the methods table's
    rows = [
        stage_scores(m, Path(args.runs) / m, train, test, folds, args.image_size, args.k)
        for m in args.methods
        if (Path(args.runs) / m / "checkpoints" / "last.pt").exists() or print(f"{m}: no run under {args.runs}")
    ]
    device = device_name("cpu")
    path = write_results(args.results, {"device": device, "image_size": args.image_size, "k": args.k, "rows": rows})
    path.with_suffix(".md").write_text(markdown(rows, device, args.image_size, args.k))
    print(path.with_suffix(".md").read_text())
    return path


if __name__ == "__main__":
    main()
