"""Every registered method pretrained on elpv with the same budget, then kNN on the defect labels.

Each method keeps its own recipe (visionssl/configs/<method>.yaml: loss, heads, optimizer, learning
rate per 256 images); the budget is the quick start's (``simclr_elpv``) for all: backbone, image size,
batch size, epochs, warmup and seed. Accuracy is the FAISS kNN top-1 on the elpv test split (bank: the
train split), next to the same backbone with random weights (the baseline every method must beat).
A second, steadier figure scores all 1,970 train images, each quarter of the train split against the
other three (labels are used only here, never in pretraining): the test split has 654 images, so one
run's test accuracy moves by about 1.6 points from chance alone.

elpv's cells are aligned, nearly identical and grayscale, and their defects are thin local cracks, so
each recipe is adapted as a user would adapt it (``ELPV_OVERRIDES``): the two-view methods get the
quick start's milder views (crops keep 60-100% of the cell, no blur, no solarisation; their own colour
jitter, which at 0.4 equals the quick start's); context prediction takes the paper's patch, gap and
jitter proportions at this image size and no colour dropping (grayscale images have no chromatic
aberration to hide); the pretext and clustering methods, plain SGD classifiers, scale their recipe's
learning rate by the square root of the batch ratio (sqrt(32/256)) instead of linearly: in 12 short
epochs the linear rule left them at chance, and no scaling diverged. Jigsaw cuts its puzzle from a
random quarter of the cell (``resize_ratio=2``: the cell's frame no longer tells a tile's place) and keeps
0.1 unscaled at batch 32 (its recipe's rate when the row was measured; sqrt scaling left it under-trained),
and its recipe re-estimates the BatchNorm statistics on whole cells at the end (``train.precise_bn``).
DeepCluster runs its small recipe (DeepCluster-v2's centroid classifier, projection head and two SimCLR
views, these with the quick start's milder views and jitter strength 0.5). SimCLR is the quick-start recipe
itself. Barlow Twins and MoCo v3 (BYOL's views) get the milder views as BYOL does; SwAV takes its recipe's
two crops (no local crops) and DINO multi-crop at the budget's size, global crops keeping 60-100% of the
cell, DINO's local crops of 96/224 of it (24 px at 64), no blur; SwAV's queue never starts (its recipe's
epoch 15 is past the budget; started after the first epoch it held the loss at ln K). DINO and MAE run on
their small recipe's ``vit_tiny_patch16_224`` with 8 x 8 patches of the budget's image size (64 tokens, as the recipe's 4 px patches at 32 px), so their random
baseline is that ViT's initialisation at the same seed: every row is scored against its own backbone.
Rows are merged into the results file by method, so a subset can be rerun.

    python benchmarks/methods_elpv.py                      # all methods, the quick-start budget
    python benchmarks/methods_elpv.py --methods simclr byol --epochs 20
    python benchmarks/methods_elpv.py --methods jigsaw --validation --set method.num_permutations=1000
    python benchmarks/methods_elpv.py --methods rotation jigsaw --seed 1   # -> methods_elpv_seed1
    python benchmarks/methods_elpv.py --summarize-seeds    # every seed's gain -> methods_elpv_seeds.md
    python benchmarks/methods_elpv.py --methods context --results methods_elpv_context_64px --set augment.image_size=266 data.image_size=300

The last line pretrains on larger views than kNN scores: with a ``data.image_size`` other than the budget's
the train split is loaded again at that size for pretraining (here context prediction cuts 64 px patches
from the cells at full resolution), and kNN still scores the budget's 64 px images.
Writes benchmarks/results/methods_elpv.json and .md (``methods_elpv_seed<N>`` for ``--seed N``).
``--validation`` is for tuning a recipe without looking at the test split: pretraining is the same
(the whole train split, no labels), but kNN scores a held-out quarter of the train split against the
other three quarters, every 4 epochs and at the end; the final score is also 4-fold (each quarter
against the other three, so all 1,970 train images are queries: about half the noise of one quarter);
the rows go to ``<out>/validation.jsonl``, not to the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import device_name, fit_to_the_end  # noqa: E402
from _elpv_report import save, summarize_seeds  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.backbones.features import resolve_device  # noqa: E402
from visionssl.data.sources import stratified_split  # noqa: E402
from visionssl.engine import NonFiniteLossError, Trainer, load_config  # noqa: E402
from visionssl.engine.config import to_dict
from visionssl.methods.mae import mae_init_  # noqa: E402

ELPV_VIEWS = ["augment.kwargs.scale=[0.6,1.0]", "augment.kwargs.blur_p=0.0"]
SQRT_LR = "optim.lr_scaling=sqrt"
ELPV_OVERRIDES = {
    "moco": ELPV_VIEWS,
    "simsiam": ELPV_VIEWS,
    "byol": ELPV_VIEWS + ["augment.kwargs.solarize_p=0.0"],
    "vicreg": ELPV_VIEWS + ["augment.kwargs.solarize_p=0.0"],
    # its small recipe's SimCLR views take the quick start's jitter strength 0.5 (SimCLR's preset: 1.0 from 64 px)
    "deepcluster": ELPV_VIEWS + ["augment.kwargs.jitter_strength=0.5", SQRT_LR],
    # the committed elpv row ran before the recipe's precise BN (on elpv it lowered context's test kNN 80.12 -> 77.52)
    "context": [
        "method.patch_size=null",
        "method.gap=null",
        "method.jitter=null",
        "method.color=none",
        "train.precise_bn=false",
        "optim.lr=0.1",  # the recipe's rate when the row was measured
        SQRT_LR,
    ],
    "rotation": [SQRT_LR],
    # train.precise_bn comes from its recipe; the committed row ran at 0.1 unscaled (the recipe's rate then)
    "jigsaw": ["augment.kwargs.resize_ratio=2.0", "optim.lr=0.1", "optim.lr_scaling=none"],
    "barlow_twins": ELPV_VIEWS + ["augment.kwargs.solarize_p=0.0"],
    "mocov3": ELPV_VIEWS + ["augment.kwargs.solarize_p=0.0"],
    # global crops as the two-view methods' (the recipe has no local crops). The recipe's queue starts at epoch 15,
    # after the budget's last epoch: started after the first, its stale embeddings had the loss sit at ln K
    "swav": [
        "augment.kwargs.global_scale=[0.6,1.0]",
        "augment.kwargs.blur_p=0.0",
        "method.freeze_prototypes_epochs=1",
        "method.num_prototypes=256",  # a quarter of the 1,056 embeddings Sinkhorn sees (3000 stalled at ln 3000)
    ],
    "dino": ["augment.kwargs.global_scale=[0.6,1.0]", "augment.kwargs.local_size=null", "augment.kwargs.blur_p=0.0"],
    "mae": ["augment.kwargs.scale=[0.6,1.0]"],
}
# on their small recipe's tiny ViT, 8 x 8 patches (the recipe's 64 tokens) at any image size, unless --vit-methods
# leaves one out (DINO then runs on --backbone without its recipe's ViT arguments; MAE needs a ViT)
VIT_METHODS = ("dino", "mae")
RECIPE = {"simclr": "simclr_elpv"}  # the quick start
KNN_TEMPERATURE = 0.07


def elpv_overrides(method: str, image_size: int, vit_methods: Collection[str] = VIT_METHODS) -> list[str]:
    """The method's elpv overrides; ``vit_methods`` also get their recipe's ViT with 8 x 8 patches of ``image_size``."""
    vit = [f"backbone.kwargs.img_size={image_size}", f"backbone.kwargs.patch_size={image_size // 8}"]
    return (vit if method in vit_methods else []) + ELPV_OVERRIDES.get(method, [])


def drop_recipe_backbone_kwargs(cfg, recipe_kwargs, overrides: list[str]) -> None:
    """Removes from ``cfg.backbone.kwargs`` the recipe's backbone arguments that ``overrides`` did not set: they
    were for the recipe's own backbone (DINO's ViT's) and would be refused by another one."""
    given = {s.partition("=")[0].removeprefix("backbone.kwargs.") for s in overrides}
    for key in set(recipe_kwargs) - given:
        cfg.backbone.kwargs.pop(key)


def backbone_label(cfg) -> str:
    """The backbone's name with its keyword arguments, e.g. ``vit_tiny_patch16_224(img_size=64, patch_size=8)``."""
    kwargs = {k: v for k, v in to_dict(cfg.backbone.kwargs).items() if k != "dynamic_img_size"}
    return cfg.backbone.name + (f"({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})" if kwargs else "")


def knn_scores(
    backbone, train, test, split, folds: np.ndarray, image_size: int, k: int, layer: str | None = None
) -> tuple[float, float]:
    """(kNN top-1 of the queries, 4-fold kNN top-1 over ``train``), in %, from one pass over the train split.

    ``split`` is None (bank: ``train``, queries: ``test``) or ``(bank_idx, query_idx)`` into ``train``;
    ``layer`` a stage of the backbone (``vs.eval.extract_features``), default its output.
    """
    x, y = vs.eval.extract_features(backbone, train, image_size=image_size, progress=False, layer=layer)
    if split is None:
        bank = (x, y)
        queries = vs.eval.extract_features(backbone, test, image_size=image_size, progress=False, layer=layer)
    else:
        bank, queries = (x[split[0]], y[split[0]]), (x[split[1]], y[split[1]])
    top1 = vs.eval.knn(*bank, *queries, k=k, temperature=KNN_TEMPERATURE)["top1"]
    return top1, cross_validated_knn(x, y, folds, k)


def stratified_folds(strata: np.ndarray, num_folds: int = 4, seed: int = 0) -> np.ndarray:
    """A fold number per sample, each stratum dealt round-robin over the folds in a seeded order."""
    rng, folds = np.random.default_rng(seed), np.empty(len(strata), dtype=np.int64)
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        folds[idx] = np.arange(len(idx)) % num_folds
    return folds


def cross_validated_knn(x: torch.Tensor, y: torch.Tensor, folds: np.ndarray, k: int) -> float:
    """kNN top-1 (%) over every row of ``x``, each fold scored against the others."""
    right = 0.0
    for f in np.unique(folds):
        query = torch.from_numpy(folds == f)
        right += vs.eval.knn(x[~query], y[~query], x[query], y[query], k=k, temperature=KNN_TEMPERATURE)["top1"] * int(
            query.sum()
        )
    return right / len(y)


def method_config(name: str, args: argparse.Namespace, stored: int, device) -> Any:
    """The method's recipe at the budget of ``args``, with its elpv adaptation and ``--set`` on top."""
    recipe = RECIPE.get(name, name)
    overrides = [
        f"augment.image_size={args.image_size}",
        f"data.image_size={stored}",
        f"optim.batch_size={args.batch_size}",
        f"train.epochs={args.epochs}",
        f"train.seed={args.seed}",
        "optim.warmup_epochs=1",
        f"train.knn_k={args.k}",
        f"train.knn_every={4 if args.validation else -1}",
        "train.progress=false",
        f"train.device={device}",
        f"out={Path(args.out) / run_name(name, args.validation)}",
        *(() if name in args.vit_methods else (f"backbone.name={args.backbone}",)),
        *elpv_overrides(name, args.image_size, args.vit_methods),
        *args.set,
    ]
    cfg = load_config(config=recipe, overrides=overrides)
    if name not in args.vit_methods:
        drop_recipe_backbone_kwargs(cfg, load_config(config=recipe).backbone.kwargs, args.set)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["all"])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument(
        "--vit-methods",
        nargs="*",
        default=list(VIT_METHODS),
        help="methods run on their recipe's ViT; the others run on --backbone (DINO can, MAE cannot)",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-seeds", type=int, default=5, help="untrained initialisations scored for the spread")
    parser.add_argument("--out", default="runs/methods_elpv")
    parser.add_argument(
        "--results",
        default=None,
        help="results file name (default: methods_elpv, "
        "methods_elpv_seed<N> for another --seed, so the main table keeps its seed)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a method's run from its checkpoint in --out (an interrupted benchmark); a method without one starts",
    )
    parser.add_argument(
        "--validation", action="store_true", help="score a held-out quarter of the train split (tuning)"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every listed method"
    )
    parser.add_argument(
        "--summarize-seeds",
        action="store_true",
        help="no training: gather methods_elpv.json and methods_elpv_seed<N>.json into methods_elpv_seeds.md",
    )
    args = parser.parse_args()
    if args.summarize_seeds:
        print(summarize_seeds())
        return
    methods = vs.list_methods() if args.methods == ["all"] else args.methods
    stored = math.ceil(args.image_size * 1.125)
    train, test = vs.data.load_dataset("elpv", "train", stored), vs.data.load_dataset("elpv", "test", stored)
    bank, split = train, None
    strata = (train.targets * 2 + train.labels["type"]).numpy()
    folds = stratified_folds(strata, 4, seed=0)  # the same queries for every seed: rows stay comparable
    if args.validation:  # the test split stays unseen: queries are a stratified quarter of the train split
        split = tuple(torch.from_numpy(i) for i in stratified_split(strata, test_fraction=0.25, seed=args.seed))
        bank, test = train.subset(split[0]), train.subset(split[1])

    def random_weights(name: str, kwargs: dict, init=None) -> tuple[float, dict]:
        """kNN of the backbone's untrained initialisation at --seed and at the next seeds (the spread); ``init``
        re-initialises it in place as its method does when it builds it (MAE's ``mae_init_``)."""
        random_seeds, random_cv = (
            [],
            [],
        )  # the spread over initialisations says how far apart two untrained backbones are
        for seed in range(args.seed, args.seed + args.random_seeds):
            torch.manual_seed(seed)  # as the trainer seeds before the method builds its backbone
            backbone = vs.create_backbone(name, **kwargs)
            top1, cv = knn_scores(
                init(backbone) if init else backbone, train, test, split, folds, args.image_size, args.k
            )
            random_seeds.append(top1)
            random_cv.append(cv)
        spread = {
            "seeds": random_seeds,
            "mean": statistics.mean(random_seeds),
            "std": statistics.pstdev(random_seeds),
            "cross_validated": random_cv,
        }
        print(
            f"random weights ({name}{' ' + str(kwargs) if kwargs else ''}, seed {args.seed}): kNN top-1 {random_seeds[0]:.2f}%; over seeds "
            f"{args.seed}-{args.seed + args.random_seeds - 1}: {spread['mean']:.2f} +- {spread['std']:.2f}",
            flush=True,
        )
        return random_seeds[0], spread  # the seed every method starts from: its own initialisation

    random_top1, spread = random_weights(args.backbone, {})
    randoms = {args.backbone: (random_top1, spread)}  # per backbone label: a row scores against its own backbone's init
    budget = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "k": args.k,
        "seed": args.seed,
    }
    device = resolve_device(args.device)
    results = args.results or ("methods_elpv" if args.seed == 0 else f"methods_elpv_seed{args.seed}")
    old = (
        json.loads((_common.RESULTS / f"{results}.json").read_text())
        if (_common.RESULTS / f"{results}.json").exists()
        else {}
    )
    kept = old.get("results", []) if old.get("budget") == budget else []  # rows of another budget are dropped
    for r in kept:  # rows written before rows named their machine ran where the file says
        r.setdefault("device", old.get("device")), r.setdefault("torch", old.get("versions", {}).get("torch"))
    rows = {r["method"]: r for r in kept}
    mine: set[str] = set()  # the methods this run trains
    for name in methods:
        cfg = method_config(name, args, stored, device)
        label = backbone_label(cfg) if cfg.backbone.name != args.backbone or cfg.backbone.kwargs else args.backbone
        init = mae_init_ if name == "mae" and cfg.method.get("encoder_init", "mae") != "timm" else None
        label += " with MAE's initialisation" if init else ""
        if label not in randoms:
            randoms[label] = random_weights(cfg.backbone.name, to_dict(cfg.backbone.kwargs), init)
        own_top1, own_spread = randoms[label]
        start = time.perf_counter()
        # another data.image_size: train_set=None lets the trainer load the train split at that size
        trainer = Trainer(cfg, train_set=train if cfg.data.image_size == stored else None, eval_sets=(bank, test))
        try:
            resumed = args.resume and (trainer.out / "checkpoints" / "last.pt").exists()
            fit_to_the_end(trainer, resume=resumed)
        except NonFiniteLossError as exc:  # recorded, and the other methods still run
            print(f"{name:12s} stopped: {exc}", flush=True)
        seconds = time.perf_counter() - start
        top1, cv = knn_scores(trainer.method.backbone, train, test, split, folds, args.image_size, args.k)
        if args.validation:
            report_validation(trainer, name, args.set, top1, cv, own_spread, seconds, Path(args.out))
            continue
        rows[name] = {
            "method": name,
            "knn_top1": top1,
            "gain_over_random": top1 - own_top1,
            "train_4fold_top1": cv,
            "train_4fold_gain": cv - own_spread["cross_validated"][0],
            "train_seconds": seconds,  # of this process only when resumed
            "resumed": resumed,
            "final_loss": trainer.metrics.get("train/loss"),
            "precision": trainer.precision,
            "epochs_done": trainer.epoch,
            "overrides": elpv_overrides(name, args.image_size),
            "set": args.set,
            "recipe": RECIPE.get(name, name),
            "device": device_name(device),
            "torch": torch.__version__,
        }
        if (
            label != args.backbone
        ):  # the row carries its own baseline: the budget's random weights are another backbone's
            rows[name].update(backbone=label, random_knn_top1=own_top1, random_knn_top1_over_seeds=own_spread)
        print(
            f"{name:12s} kNN top-1 {top1:6.2f}%  ({top1 - own_top1:+.2f} vs random {label}); 4-fold on the train split "
            f"{cv:6.2f}% ({cv - own_spread['cross_validated'][0]:+.2f}); {seconds:6.0f} s",
            flush=True,
        )
        mine.add(name)
        if (
            _common.RESULTS / f"{results}.json"
        ).exists():  # rows another run wrote meanwhile are kept (runs side by side)
            now = json.loads((_common.RESULTS / f"{results}.json").read_text())
            if now.get("budget") == budget:
                rows = {**{r["method"]: r for r in now["results"]}, **{m: rows[m] for m in mine}}
        path = save(results, rows, budget, random_top1, spread, device_name(device), args.k)
        print(f"wrote {path}")


def run_name(method: str, validation: bool) -> str:
    """The run directory's name: the method, and for a tuning run also the time (each run keeps its own metrics)."""
    return f"{method}-validation-{time.strftime('%m%d-%H%M%S')}-{os.getpid()}" if validation else method


def report_validation(
    trainer: Trainer, name: str, extra: list[str], top1: float, cv: float, spread: dict, seconds: float, out: Path
) -> None:
    """Prints the validation curve and the 4-fold score and appends the row to ``<out>/validation.jsonl``."""
    lines = (trainer.out / "metrics.jsonl").read_text().splitlines()
    curve = [(r["epoch"], r["knn/top1"]) for r in map(json.loads, lines) if "knn/top1" in r]
    row = {
        "method": name,
        "set": extra,
        "validation_top1": top1,
        "cross_validated_top1": cv,
        "curve": curve,
        "random_over_seeds": spread["seeds"],
        "random_cross_validated": spread["cross_validated"],
        "train_seconds": seconds,
        "final_loss": trainer.metrics.get("train/loss"),
        "epochs_done": trainer.epoch,
    }
    with open(out / "validation.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    rcv = spread["cross_validated"]
    print(
        f"{name:12s} 4-fold kNN top-1 {cv:6.2f}% (random {min(rcv):.2f}-{max(rcv):.2f}); "
        f"validation quarter {top1:6.2f}% (random {min(spread['seeds']):.2f}-{max(spread['seeds']):.2f}); "
        f"curve {' '.join(f'{t:.1f}' for _, t in curve)}; {' '.join(extra)}; {seconds:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
