"""``visionssl eval knn|linear|finetune``: one checkpoint on one labelled dataset, next to its random-weights baseline."""

from __future__ import annotations

import argparse
from typing import Any

from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.cli.options import EPILOG, image_size, positive_float, positive_int
from visionssl.data.dataset import stored_size
from visionssl.errors import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``eval knn``, ``eval linear`` and ``eval finetune`` to the ``visionssl`` command line."""
    p = sub.add_parser("eval", help="evaluate a pretrained backbone (kNN, linear probe, fine-tuning)", epilog=EPILOG)
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="{knn,linear,finetune}")
    k = esub.add_parser(
        "knn",
        help="FAISS kNN accuracy of frozen features",
        description="kNN classification of the test split with the train split as the bank, on frozen features, "
        "printed next to the same backbone with random weights.",
    )
    add_checkpoint_options(k)
    k.add_argument("--k", type=positive_int, default=200, help="neighbours (default 200)")
    k.add_argument("--temperature", type=positive_float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
    k.set_defaults(run=run_eval, evaluator="knn")
    lp = esub.add_parser("linear", help="linear probe on cached features (learning-rate x weight-decay sweep)")
    add_checkpoint_options(lp)
    lp.set_defaults(run=run_eval, evaluator="linear")
    add_finetune_parser(esub)


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run directory, a checkpoint file, or a model-zoo name")
    p.add_argument("--data", default=None, help="labelled dataset spec (default: the run's dataset)")
    p.add_argument(
        "--image-size", type=image_size, default=None, help="view size (default: the run's augment.image_size)"
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-weights baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-weights baseline")
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.add_argument(
        "--layer",
        default="final",
        help="features of this stage, globally average-pooled: final (default) or stage0..stageN of a timm "
        "backbone's feature_info (e.g. stage3 of a ResNet is layer3); pretext methods are best judged "
        "at their best stage",
    )


def load_for_eval(checkpoint: str, trust_code: bool = False) -> tuple[Any, dict[str, Any], tuple[str, dict]]:
    """(backbone, run config or {}, (backbone name, kwargs) for the random baseline) of any checkpoint spec."""
    from visionssl.engine.config_checks import check_run_settings
    from visionssl.zoo import resolve_checkpoint

    source = resolve_checkpoint(checkpoint, trust_code=trust_code)  # checks the backbone the spec names
    if source.kind == "run":
        check_run_settings(source.config, str(source.path))  # the dataset and sizes eval reads from it
    config = {k: v if isinstance(v, dict) else {} for k, v in source.config.items()}
    return source.build(), config, (source.backbone, source.backbone_kwargs)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from visionssl import distributed
    from visionssl import eval as eval_lib
    from visionssl.backbones import create_backbone
    from visionssl.backbones.features import resolve_device
    from visionssl.data import load_dataset
    from visionssl.eval.layers import with_layer
    from visionssl.eval.sharded import extract_features_distributed

    device = distributed.init(resolve_device(args.device, "--device"))  # under torchrun the ranks share the extraction
    backbone, cfg, baseline = load_for_eval(args.checkpoint, args.trust_code)
    with_layer(backbone, args.layer)  # a bad --layer fails here, naming the valid stages, before any data loads
    data_cfg, aug_cfg = cfg.get("data", {}), cfg.get("augment", {})
    spec = args.data or data_cfg.get("eval") or data_cfg.get("name") or "elpv"
    image_size = args.image_size or aug_cfg.get("image_size") or 224
    stored = data_cfg.get("image_size") if spec == data_cfg.get("name") else None
    stored = stored or stored_size(image_size)
    train, test = load_dataset(spec, "train", stored), load_dataset(spec, "test", stored)
    if train.targets is None:
        raise DataError(f"dataset {spec!r} has no labels to evaluate with")
    models = [(args.checkpoint, backbone)]
    if not args.no_baseline:
        torch.manual_seed(args.seed)
        name, kwargs = baseline  # the checkpoint's own architecture, already checked by load_for_eval
        models.append((f"random weights ({name})", create_backbone(name, **kwargs)))
    if distributed.is_main():
        layer = "" if args.layer == "final" else f", features of {args.layer}"
        print(
            f"{args.evaluator} on {spec} (label: {train.label}), {len(train)} train / {len(test)} test images at {image_size} px{layer}"
        )
    width = max(len(n) for n, _ in models)
    for name, model in models:
        feats = [
            extract_features_distributed(
                with_layer(model, args.layer),
                ds,
                batch_size=args.batch_size,
                image_size=image_size,
                device=device,
                dst=0,
            )
            for ds in (train, test)
        ]
        if not distributed.is_main():  # rank 0 received the features and evaluates
            continue
        if args.evaluator == "knn":
            result = eval_lib.knn(
                feats[0][0],
                feats[0][1],
                feats[1][0],
                feats[1][1],
                k=min(args.k, len(train)),
                temperature=args.temperature,
            )
        else:
            result = eval_lib.linear_probe(feats[0][0], feats[0][1], feats[1][0], feats[1][1])
        print(f"  {name:<{width}}  top-1 {result['top1']:6.2f}%  top-5 {result['top5']:6.2f}%", flush=True)
    return 0


def add_finetune_parser(esub: argparse._SubParsersAction) -> None:
    """Adds ``eval finetune``: the whole backbone and a linear head trained on a fraction of the labels."""
    ft = esub.add_parser(
        "finetune",
        help="fine-tune the whole backbone on a fraction of the labels (1%%, 10%%, 100%%)",
        description="Fine-tune the backbone with a linear head on a class-balanced, seeded fraction of the train "
        "split's labels (the same images for every checkpoint), choose the epoch on a held-out part of that "
        "subset and print the test top-1 of the chosen epoch, next to the same backbone with random weights.",
    )
    ft.add_argument("--checkpoint", required=True, help="a run directory, a checkpoint file, or a model-zoo name")
    ft.add_argument("--data", default=None, help="labelled dataset spec (default: the run's dataset)")
    ft.add_argument(
        "--fraction", type=float, default=0.1, help="share of every class's labels, in (0, 1] (default 0.1)"
    )
    ft.add_argument("--epochs", type=positive_int, default=30, help="fine-tuning epochs (default 30)")
    ft.add_argument("--seed", type=int, default=0, help="picks the labelled subset, the batches and the baseline")
    ft.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    ft.add_argument(
        "--optimizer", choices=("auto", "sgd", "adamw"), default="auto", help="auto: AdamW for ViTs, else SGD"
    )
    ft.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: by optimizer and batch)")
    ft.add_argument("--augment", default="mae", help="augmentation preset of the training views (default mae)")
    ft.add_argument("--image-size", type=image_size, default=None, help="view size (default: the run's)")
    ft.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ft.add_argument("--no-baseline", action="store_true", help="skip the random-weights baseline")
    ft.add_argument("--json", default=None, help="also write the results (metrics, subset record) to this file")
    ft.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    ft.set_defaults(run=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    import json

    import torch

    from visionssl.backbones import create_backbone
    from visionssl.backbones.features import resolve_device
    from visionssl.data import load_dataset
    from visionssl.eval.finetune import finetune
    from visionssl.eval.finetune_subset import check_fraction

    fraction = check_fraction(args.fraction)  # before anything loads
    device = resolve_device(args.device, "--device")
    backbone, cfg, (name, kwargs) = load_for_eval(args.checkpoint, args.trust_code)
    data_cfg, aug_cfg = cfg.get("data", {}), cfg.get("augment", {})
    spec = args.data or data_cfg.get("eval") or data_cfg.get("name") or "elpv"
    size = args.image_size or aug_cfg.get("image_size") or 224
    stored = (data_cfg.get("image_size") if spec == data_cfg.get("name") else None) or stored_size(size)
    train, test = load_dataset(spec, "train", stored), load_dataset(spec, "test", stored)
    if train.targets is None or test.targets is None:
        raise DataError(f"dataset {spec!r} has no labels to fine-tune with")
    models = [(args.checkpoint, backbone)]
    if not args.no_baseline:
        torch.manual_seed(args.seed)
        models.append((f"random weights ({name})", create_backbone(name, **kwargs)))
    options = {"fraction": fraction, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size}
    options.update(optimizer=args.optimizer, lr=args.lr, augment=args.augment, image_size=size, device=device)
    width, results = max(len(n) for n, _ in models), {}
    for i, (model_name, model) in enumerate(models):
        result = finetune(model, train, test, **options)
        if i == 0:
            sub = result["subset"]
            print(
                f"fine-tune on {spec} (label: {train.label}), {sub['images']} of {len(train)} train labels "
                f"({fraction:g}: {sub['train']} trained, {sub['held_out']} held out to choose the epoch; subset "
                f"sha256 {sub['indices_sha256'][:12]}), {len(test)} test images at {size} px"
            )
        results[model_name] = result
        print(
            f"  {model_name:<{width}}  top-1 {result['top1']:6.2f}%  top-5 {result['top5']:6.2f}%  "
            f"(epoch {result['best_epoch']}/{args.epochs}, held-out top-1 {result['val_top1'] or 0:.2f}%)",
            flush=True,
        )
    if args.json:
        from visionssl.files import atomic_write

        atomic_write(args.json, json.dumps(results, indent=2) + "\n")
    return 0
