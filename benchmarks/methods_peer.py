"""visionssl against LightlySSL at equal budget: each contrastive/non-contrastive method trained twice per seed.

For each of simclr, moco, byol, simsiam, vicreg, swav, barlow_twins and dino and each seed, the same backbone with
the same initial weights is pretrained on the elpv train split (labels unused) for the same epochs, image size and batch:

- **visionssl**: the method's own recipe adapted to elpv exactly as ``benchmarks/methods_elpv.py`` does it
  (``RECIPE`` / ``ELPV_OVERRIDES``; ``--plain-recipe``: the small recipe as the CLI gives it), through
  ``Trainer`` (batched views on the device); DINO's recipe trains ``--backbone`` like the others (its ViT's
  arguments apply only when ``--backbone`` is that ViT, then with 8 x 8 patches);
- **LightlySSL** (``_lightly_peer.py``): its components, as its examples write them: its heads (at the widths of
  the visionssl method, so the two differ in recipe and code, not in size; SwAV: the same number of prototypes,
  DINO: the same output, hidden and bottleneck widths), its loss (``NTXentLoss``, ``NegativeCosineSimilarity``,
  ``VICRegLoss``, ``SwaVLoss``, ``BarlowTwinsLoss``, ``DINOLoss``), its momentum or teacher update
  (``update_momentum`` with ``cosine_schedule(step, total, 0.996, 1)``; ``--peer-momentum``), SwAV's prototypes
  normalised every step and DINO's last layer frozen in the first epoch, its per-image transforms
  (``SimCLRTransform``, ``MoCoV2Transform``, ``BYOLTransform`` (byol, barlow_twins), ``SimSiamTransform``,
  ``VICRegTransform``, ``SwaVTransform``, ``DINOTransform``; no blur below 64 px; the multi-crop ones with global
  crops of the image size and local crops of ``local_crop_size``; ``--peer-views simclr``: the plain small-image
  loop's ``SimCLRTransform`` for every two-view method, swav and dino keep their multi-crop views) through a torch
  DataLoader, and its example's optimizer: SGD for the two-view methods (``--peer-lr``, momentum 0.9, weight decay
  5e-4), Adam for swav and dino (``--peer-adam-lr``, 1e-3; the row's ``peer_optimizer``), the rate decaying along
  a cosine per step. A run whose loss goes non-finite is retried once at a tenth of the rate (``peer_lr``).

Both backbones are then scored the same way (``methods_elpv.knn_scores``: FAISS kNN top-1 on the test
split, bank the train split, and 4-fold kNN over the train split) on both labels of the dataset: elpv's
``defect`` and ``type``, the generated ``shapes`` set's ``shape`` and ``texture`` (``--dataset shapes:N``;
``--eval-split holdout`` scores its holdout split instead of the test split: report on it last, never tune
on it), or scikit-learn's handwritten ``digits`` (``--dataset digits``: 1,797 real 8 x 8 images upsampled, 10
classes; ``_common.load_digits``). Pretraining is label-free, so one pretrained backbone is scored on both. Each row also keeps its loss
per epoch (``loss_curve``; ``loss_chance``: ln of the number of candidates of the contrastive loss, or of
SwAV's prototypes and DINO's outputs, where a loss that learns nothing sits) and the effective rank of the backbone's test features (``feature_rank``;
visionssl's runs also log the embedding's effective rank per epoch, ``rank_curve``).
Mean and spread (population std) over the seeds per method, side and label go to
benchmarks/results/methods_peer.{json,md} (elpv at batch 32) or methods_peer_<dataset>_b<batch>{,_holdout},
with the machine named.

    python benchmarks/methods_peer.py                           # 8 methods x 3 seeds, the quick-start budget
    python benchmarks/methods_peer.py --methods byol moco --seeds 0 1 2 3 4 --epochs 15
    python benchmarks/methods_peer.py --plain-recipe --peer-min-scale 0.6   # controls: either side's views
    python benchmarks/methods_peer.py --dataset shapes:4000 --image-size 32 --batch-size 128 --backbone peer_cnn \
        --methods byol moco simclr --plain-recipe   # -> results/methods_peer_shapes4000_b128
    python benchmarks/methods_peer.py --dataset digits --image-size 32 --batch-size 128 --backbone peer_cnn \
        --methods swav barlow_twins dino   # -> results/methods_peer_digits_b128
    python benchmarks/methods_peer.py --epochs 1 --image-size 32 --batch-size 16 --max-images 64 --seeds 0 --results dry
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import device_name  # noqa: E402
from _lightly_peer import OPTIMIZER_NAMES, optimizer_of, train_lightly  # noqa: E402
from _peer_report import ADAM_LR, DATASET_LABELS, LABELS, markdown, peer_rate, save, summarize  # noqa: E402, F401
from _small_backbones import BACKBONES, peer_cnn, peer_resnet  # noqa: E402, F401  (registers them)
from methods_elpv import (  # noqa: E402
    ELPV_OVERRIDES,
    RECIPE,
    VIT_METHODS,
    drop_recipe_backbone_kwargs,
    knn_scores,
    stratified_folds,
)

import visionssl as vs  # noqa: E402
from visionssl.backbones.features import resolve_device  # noqa: E402
from visionssl.engine import Trainer, load_config  # noqa: E402

METHODS = ("simclr", "moco", "byol", "simsiam", "vicreg", "swav", "barlow_twins", "dino")


def run_curves(out: Path) -> dict[str, list[float]]:
    """A visionssl run's mean ``train/loss`` and ``collapse/effective_rank`` per epoch, from its metrics.jsonl."""
    epochs: dict[int, dict[str, list[float]]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            per = epochs.setdefault(max(math.ceil(row["epoch"]), 1), {})
            for key in ("train/loss", "collapse/effective_rank"):
                if key in row:
                    per.setdefault(key, []).append(row[key])
    ordered = [epochs[e] for e in sorted(epochs)]
    return {
        name: [statistics.mean(e[key]) for e in ordered if key in e]
        for name, key in (("loss_curve", "train/loss"), ("rank_curve", "collapse/effective_rank"))
    }


def loss_chance(method: str, ours: vs.methods.SSLMethod, batch_size: int) -> float | None:
    """ln of the candidates one query is scored against (what a contrastive loss reads when nothing is learnt;
    SwAV and DINO: ln of the prototypes or outputs, the loss of uniform predictions)."""
    if method == "simclr":
        return math.log(2 * batch_size - 1)
    if method == "moco":
        return math.log(ours.queue.shape[0] + 1)
    if method == "swav":
        return math.log(ours.prototypes.out_features)
    if method == "dino":
        return math.log(ours.head.last_layer.out_features)
    return None


def feature_rank(backbone: nn.Module, data, image_size: int) -> float:
    """Effective rank of the backbone's features of ``data`` (centred): low when the representation collapsed."""
    from visionssl.engine.monitor import effective_rank

    x, _ = vs.eval.extract_features(backbone, data, image_size=image_size, progress=False)
    return float(effective_rank(x - x.mean(0)))


def train_visionssl(method: str, train, test, args, seed: int, device: torch.device, stored: int) -> Trainer:
    """The trainer of ``method`` at the budget, built but not run (its backbone holds the initial weights)."""
    overrides = [
        f"backbone.name={args.backbone}",
        f"augment.image_size={args.image_size}",
        f"data.image_size={stored}",
        f"optim.batch_size={args.batch_size}",
        f"train.epochs={args.epochs}",
        f"train.seed={seed}",
        "optim.warmup_epochs=1",
        f"train.knn_k={args.k}",
        "train.knn_every=-1",
        "train.progress=false",
        f"train.device={device}",
        f"out={Path(args.out) / f'{method}-seed{seed}'}",
        *(() if args.plain_recipe else ELPV_OVERRIDES.get(method, [])),
        *args.set,
    ]
    if method == "moco" and not any(s.startswith("method.queue_size=") for s in args.set):
        # the queue must stay below the training set (a dry run's subset included)
        overrides.append(f"method.queue_size={min(1024, max(args.batch_size, len(train) // 2))}")
    elpv = args.dataset == "elpv"  # elsewhere every method runs its own small recipe (simclr: not the quick start's)
    recipe = RECIPE.get(method, method) if elpv else method
    own = load_config(config=recipe).backbone
    vit = [f"backbone.kwargs.img_size={args.image_size}", f"backbone.kwargs.patch_size={args.image_size // 8}"]
    vit = vit if args.backbone == own.name and method in VIT_METHODS else []  # 8 x 8 patches, as methods_elpv.py
    cfg = load_config(config=recipe, overrides=[*vit, *overrides])
    if args.backbone != own.name:
        drop_recipe_backbone_kwargs(cfg, own.kwargs, args.set)
    return Trainer(cfg, train_set=train, eval_sets=(train, test))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Validates ``--dataset``/``--eval-split``, fills in the results name; returns the dataset's name."""
    dataset = args.dataset.partition(":")[0]
    if dataset not in DATASET_LABELS:
        parser.error(f"--dataset {args.dataset!r}: valid: elpv, shapes[:N], digits")
    if args.eval_split == "holdout" and dataset != "shapes":
        parser.error(f"--eval-split holdout: {dataset} has no holdout split (shapes[:N] has)")
    if dataset != "elpv":
        args.plain_recipe = True  # the elpv adaptation is for elpv
    if args.results is None:
        name = (
            ""
            if dataset == "elpv" and args.batch_size == 32
            else f"_{args.dataset.replace(':', '')}_b{args.batch_size}"
        )
        args.results = f"methods_peer{name}" + ("_holdout" if args.eval_split == "holdout" else "")
    return dataset


def load_data(args: argparse.Namespace, dataset: str, stored: int) -> tuple[tuple[str, ...], dict]:
    """The labels scored and, per label, the (train, queries) pair of datasets at ``stored`` px."""
    labels = DATASET_LABELS[dataset]
    if dataset == "elpv":
        data = {
            label: [
                vs.data.load_dataset(f"elpv:{label}" if label != "defect" else "elpv", split, stored)
                for split in ("train", "test")
            ]
            for label in labels
        }
    elif dataset == "digits":
        data = {"digit": [_common.load_digits(split, stored) for split in ("train", "test")]}
    else:
        pair = [vs.data.load_dataset(args.dataset, split, stored) for split in ("train", args.eval_split)]
        data = {label: [ds.with_label(label) for ds in pair] for label in labels}
    if args.max_images:
        data = {
            label: [ds.subset(torch.arange(min(args.max_images, len(ds)))) for ds in pair]
            for label, pair in data.items()
        }
    return labels, data


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--dataset",
        default="elpv",
        help="elpv, shapes[:N] (the generated set, visionssl.data.shapes) or digits (scikit-learn's, upsampled)",
    )
    parser.add_argument(
        "--eval-split",
        default="test",
        choices=("test", "holdout"),
        help="queries of the kNN; holdout: the shapes set's split never tuned on (report on it last)",
    )
    parser.add_argument("--backbone", default="resnet18", help=f"any backbone; the small custom ones: {BACKBONES}")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--peer-lr", type=float, default=0.1, help="LightlySSL side: SGD learning rate")
    parser.add_argument(
        "--peer-adam-lr", type=float, default=ADAM_LR, help="LightlySSL side: Adam learning rate (swav, dino)"
    )
    parser.add_argument(
        "--peer-min-scale", type=float, default=None, help="LightlySSL side: its crops' min_scale (default: its own)"
    )
    parser.add_argument(
        "--peer-views",
        default="own",
        choices=("own", "simclr"),
        help="LightlySSL side: each method's own transform, or SimCLRTransform (jitter 0.5, no blur) for all",
    )
    parser.add_argument(
        "--peer-momentum", type=float, default=0.996, help="LightlySSL side: the momentum schedule's start"
    )
    parser.add_argument(
        "--plain-recipe",
        action="store_true",
        help="visionssl side: the method's small recipe as the CLI gives it, without the elpv adaptation",
    )
    parser.add_argument("--workers", type=int, default=2, help="LightlySSL side: DataLoader workers")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N train/test images (dry runs)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides of the visionssl side"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/methods_peer")
    parser.add_argument(
        "--results",
        default=None,
        help="results file name under benchmarks/results (default: methods_peer for elpv at batch 32, "
        "else methods_peer_<dataset>_b<batch>, with _holdout for --eval-split holdout)",
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="NAME", help="no training: gather the rows of results/NAME.json into --results"
    )
    args = parser.parse_args(argv)
    dataset = check_args(parser, args)
    if args.merge:  # e.g. seeds run side by side, each into its own file
        parts = [json.loads((_common.RESULTS / f"{name}.json").read_text()) for name in args.merge]
        budgets = [{k: v for k, v in p["budget"].items() if k != "seeds"} for p in parts]
        if any(b != budgets[0] for b in budgets):
            raise SystemExit(f"--merge: the files were run at different budgets: {budgets}")
        rows = [r for p in parts for r in p["rows"]]
        path = save(args.results, rows, parts[0]["budget"], parts[0]["device"], parts[0]["lightly"])
        print(path.with_suffix(".md").read_text())
        return path
    device = resolve_device(args.device)
    stored = math.ceil(args.image_size * 1.125)
    labels, data = load_data(args, dataset, stored)
    train, test = data[labels[0]]
    strata = train.targets
    if len(labels) > 1:  # folds keep the share of every pair of labels
        strata = strata * len(train.classes[labels[1]]) + train.labels[labels[1]]
    strata = strata.numpy()
    folds = stratified_folds(strata, 4, seed=0)
    budget = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "k": args.k,
        "seeds": args.seeds,
        "peer_lr": args.peer_lr,
        "max_images": args.max_images,
        # keys only when set, so files written before the options existed keep their budget
        **({"peer_adam_lr": args.peer_adam_lr} if args.peer_adam_lr != ADAM_LR else {}),
        **({"peer_min_scale": args.peer_min_scale} if args.peer_min_scale is not None else {}),
        **({"peer_views": args.peer_views} if args.peer_views != "own" else {}),
        **({"peer_momentum": args.peer_momentum} if args.peer_momentum != 0.996 else {}),
        **({"visionssl_recipe": "plain"} if args.plain_recipe else {}),
        **({"visionssl_set": args.set} if args.set else {}),
        **({"dataset": args.dataset} if dataset != "elpv" else {}),
        **({"eval_split": args.eval_split} if args.eval_split != "test" else {}),
    }
    import lightly

    old = _common.RESULTS / f"{args.results}.json"
    old = json.loads(old.read_text()) if old.exists() else {}
    # rows of the same budget are kept (a stopped run resumes, more seeds or methods add rows); others dropped
    same = {k: v for k, v in budget.items() if k != "seeds"}
    rows = [r for r in old.get("rows", []) if {k: v for k, v in old.get("budget", {}).items() if k != "seeds"} == same]
    done = {(r["method"], r["seed"]) for r in rows}
    for method in args.methods:
        for seed in args.seeds:
            if (method, seed) in done:
                continue
            trainer = train_visionssl(method, train, test, args, seed, device, stored)
            initial = copy.deepcopy(trainer.method.backbone).cpu()  # both sides start from these weights
            start = time.perf_counter()
            _common.fit_to_the_end(trainer)
            ours_seconds = time.perf_counter() - start
            first = peer_rate(method, budget)
            for peer_lr in (first, first / 10):  # a diverged peer gets one more try at a tenth
                torch.manual_seed(seed)
                start = time.perf_counter()
                peer, finite, peer_curve = train_lightly(method, initial, trainer.method, train, args, device, peer_lr)
                peer_seconds = time.perf_counter() - start
                if finite:
                    break
                name = OPTIMIZER_NAMES[optimizer_of(method)]
                print(f"  LightlySSL {method}: the loss went non-finite at {name} lr {peer_lr:g}", flush=True)
            chance = loss_chance(method, trainer.method, args.batch_size)
            curves = {
                "visionssl": {**run_curves(trainer.out), "loss_chance": chance},
                "lightly": {"loss_curve": peer_curve, "loss_chance": chance},
                "untrained": {},
            }
            for side, backbone, seconds in (
                ("visionssl", trainer.method.backbone, ours_seconds),
                ("lightly", peer, peer_seconds),
                ("untrained", initial, 0.0),  # where both started: a method must end above it
            ):
                scores = {}
                for label in labels:
                    if side == "lightly" and not finite:  # diverged twice: no features to score
                        scores[label] = scores[f"{label}_4fold"] = float("nan")
                        continue
                    top1, cv = knn_scores(backbone, *data[label], None, folds, args.image_size, min(args.k, len(train)))
                    scores[label], scores[f"{label}_4fold"] = top1, cv
                rows.append({"method": method, "seed": seed, "side": side, "scores": scores, "train_seconds": seconds})
                if side == "lightly":
                    rows[-1]["peer_lr"] = peer_lr
                    if optimizer_of(method) != "sgd":  # rows without the key: SGD
                        rows[-1]["peer_optimizer"] = optimizer_of(method)
                if side != "lightly" or finite:
                    rows[-1]["feature_rank"] = feature_rank(backbone, test, args.image_size)
                rows[-1].update(curves[side])
                print(
                    f"{method:8s} seed {seed} {side:9s} "
                    + "  ".join(f"{label} {scores[label]:6.2f}%" for label in labels)
                    + f"  rank {rows[-1].get('feature_rank', float('nan')):5.1f} ({seconds:.0f} s)",
                    flush=True,
                )
            path = save(args.results, rows, budget, device_name(device), lightly.__version__)  # after every seed
    path = save(args.results, rows, budget, device_name(device), lightly.__version__)
    print(path.with_suffix(".md").read_text())
    return path


if __name__ == "__main__":
    main()
