"""Does the fast path cost accuracy? The quick start trained twice at the same budget, then kNN on elpv.

  slow path   ``train.precision=fp32``: fp32 views, fp32 forward and backward.
  fast path   ``train.precision=auto``: on CUDA and on CPUs with hardware bf16, bf16 views and bf16
              autocast (what the quick start runs there); elsewhere the same as the slow path.

Both runs use the ``simclr_elpv`` recipe unchanged (ResNet-18, 64 px, batch 32, 12 epochs, seed 0) and are
scored by FAISS kNN (k=20) on the elpv defect labels: the bank is the train split, the queries the test split.
"Within noise" is judged against the binomial standard error of a top-1 accuracy on the test split,
sqrt(p (1 - p) / n): the spread that a different draw of test images alone would give.

    python benchmarks/fast_path_accuracy.py              # about two quick starts of time
Writes benchmarks/results/fast_path_accuracy_<cpu|cuda>.json.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, write_results  # noqa: E402
from methods_elpv import knn_top1  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.engine import Trainer, load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="simclr_elpv")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/fast_path_accuracy")
    args = parser.parse_args()
    rows = []
    for path, precision in (("slow", "fp32"), ("fast", "auto")):
        cfg = load_config(config=args.config, overrides=[
            f"train.precision={precision}", f"train.device={args.device}", "train.knn_every=-1", "train.progress=false",
            f"out={Path(args.out) / path}",
        ])
        size = int(cfg.augment.image_size)
        train = vs.data.load_dataset(cfg.data.name, "train", int(cfg.data.image_size))
        test = vs.data.load_dataset(cfg.data.name, "test", int(cfg.data.image_size))
        start = time.perf_counter()
        trainer = Trainer(cfg, train_set=train, eval_sets=(train, test))
        trainer.fit()
        seconds = time.perf_counter() - start
        top1 = knn_top1(trainer.method.backbone, train, test, size, int(cfg.train.knn_k))
        stderr = 100 * math.sqrt(top1 / 100 * (1 - top1 / 100) / len(test))
        rows.append({"path": path, "precision": trainer.precision, "views_dtype": str(getattr(trainer.augment, "dtype", None)),
                     "knn_top1": top1, "binomial_stderr": stderr, "train_seconds": seconds,
                     "images_per_s": trainer.epoch * len(train) / seconds})
        print(f"{path} path ({trainer.precision}): kNN top-1 {top1:.2f}% (+-{stderr:.2f})  {seconds:.0f} s", flush=True)
    slow, fast = rows
    diff, noise = fast["knn_top1"] - slow["knn_top1"], slow["binomial_stderr"]
    print(f"fast - slow: {diff:+.2f} points (standard error {noise:.2f}); speed-up {slow['train_seconds'] / fast['train_seconds']:.2f}x")
    device = trainer.device
    path = write_results(f"fast_path_accuracy_{device.type}", {
        "device": device_name(device), "config": args.config, "k": int(cfg.train.knn_k), "test_images": len(test),
        "results": rows, "difference_points": diff, "within_one_stderr": abs(diff) <= noise,
        "speedup": slow["train_seconds"] / fast["train_seconds"],
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
