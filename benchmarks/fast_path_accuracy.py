"""Does the fast path cost accuracy? The quick start trained twice at the same budget, then kNN on elpv.

  slow path   ``train.precision=fp32``: fp32 views, fp32 forward and backward.
  fast path   ``train.precision=auto``: on CUDA and on CPUs with hardware bf16, bf16 views and bf16
              autocast (what the quick start runs there); elsewhere the same as the slow path.

Both runs use the ``simclr_elpv`` recipe unchanged (ResNet-18, 64 px, batch 32, 12 epochs, seed 0) and are
scored by FAISS kNN (k=20) on the elpv defect labels: the bank is the train split, the queries the test split.
"Within noise" is judged two ways: against the binomial standard error of a top-1 accuracy on the test
split, sqrt(p (1 - p) / n), the spread that another draw of test images alone would give; and by the exact
McNemar test on the test images that one path gets right and the other wrong (paired, two-sided). The same
test compares each path with the untrained backbone it started from.

    python benchmarks/fast_path_accuracy.py              # about two quick starts of time
    python benchmarks/fast_path_accuracy.py --score-only # rescore the runs already in --out
Writes benchmarks/results/fast_path_accuracy_<cpu|cuda>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, device_name, write_results  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.backbones.features import resolve_device  # noqa: E402
from visionssl.engine import Trainer, load_config  # noqa: E402
from visionssl.eval.knn import knn_predict  # noqa: E402


def correct(backbone: torch.nn.Module, train, test, image_size: int, k: int) -> torch.Tensor:
    """Which test images the kNN classifier (bank: train, weighted votes, T=0.07) labels right, (Q,) bool."""
    (bank, bank_y), (queries, y) = [
        vs.eval.extract_features(backbone, ds, image_size=image_size, progress=False) for ds in (train, test)
    ]
    return knn_predict(bank, bank_y, queries, k=k, temperature=0.07)[k].argmax(1) == y


def mcnemar(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Exact two-sided McNemar test of two classifiers on the same images (a, b: per-image correctness)."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n, low = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n) if n else 1.0
    return {"only_first_right": only_a, "only_second_right": only_b, "p_value": p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="simclr_elpv")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/fast_path_accuracy")
    parser.add_argument("--score-only", action="store_true", help="score the runs already in --out (no training)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    results = RESULTS / f"fast_path_accuracy_{device.type}.json"
    old = json.loads(results.read_text()) if args.score_only else {}
    rows, hits = [], {}
    for path, precision in (("slow", "fp32"), ("fast", "auto")):
        cfg = load_config(
            config=args.config,
            overrides=[
                f"train.precision={precision}",
                f"train.device={device}",
                "train.knn_every=-1",
                "train.progress=false",
                f"out={Path(args.out) / path}",
            ],
        )
        size, k = int(cfg.augment.image_size), int(cfg.train.knn_k)
        train = vs.data.load_dataset(cfg.data.name, "train", int(cfg.data.image_size))
        test = vs.data.load_dataset(cfg.data.name, "test", int(cfg.data.image_size))
        if args.score_only:  # the weights of the finished run; how it ran from the results file
            row = next(r for r in old["results"] if r["path"] == path)
            backbone, seconds = vs.zoo.load_backbone(cfg.out), row["train_seconds"]
            used, views = row["precision"], row["views_dtype"]
        else:
            trainer = Trainer(cfg, train_set=train, eval_sets=(train, test))
            start = time.perf_counter()
            trainer.fit()
            seconds = time.perf_counter() - start
            backbone, used, views = (
                trainer.method.backbone,
                trainer.precision,
                str(getattr(trainer.augment, "dtype", None)),
            )
        hits[path] = correct(backbone, train, test, size, k)
        top1 = 100 * hits[path].double().mean().item()
        stderr = 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / len(test))
        rows.append(
            {
                "path": path,
                "precision": used,
                "views_dtype": views,
                "knn_top1": top1,
                "binomial_stderr": stderr,
                "train_seconds": seconds,
                "images_per_s": int(cfg.train.epochs) * len(train) / seconds,
            }
        )
        print(f"{path} path ({used}): kNN top-1 {top1:.2f}% (+-{stderr:.2f})  {seconds:.0f} s", flush=True)
    torch.manual_seed(int(cfg.train.seed))  # the initialisation both runs started from
    hits["random"] = correct(vs.create_backbone(cfg.backbone.name, **cfg.backbone.kwargs), train, test, size, k)
    tests = {
        "fast_vs_slow": mcnemar(hits["fast"], hits["slow"]),
        "slow_vs_random": mcnemar(hits["slow"], hits["random"]),
        "fast_vs_random": mcnemar(hits["fast"], hits["random"]),
    }
    slow, fast = rows
    diff, noise = fast["knn_top1"] - slow["knn_top1"], slow["binomial_stderr"]
    random_top1 = 100 * hits["random"].double().mean().item()
    print(f"random weights: kNN top-1 {random_top1:.2f}%")
    print(
        f"fast - slow: {diff:+.2f} points (standard error {noise:.2f}); speed-up {slow['train_seconds'] / fast['train_seconds']:.2f}x"
    )
    for name, t in tests.items():
        print(
            f"McNemar {name}: {t['only_first_right']} vs {t['only_second_right']} images right only by one side, p = {t['p_value']:.3f}"
        )
    path = write_results(
        results.stem,
        {
            "device": old.get("device") or device_name(device),
            "config": args.config,
            "k": k,
            "test_images": len(test),
            "results": rows,
            "random_knn_top1": random_top1,
            "difference_points": diff,
            "within_one_stderr": abs(diff) <= noise,
            "mcnemar": tests,
            "speedup": slow["train_seconds"] / fast["train_seconds"],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
