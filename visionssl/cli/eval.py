"""``visionssl eval knn|linear``: one checkpoint on one labelled dataset, next to its random-weights baseline."""

from __future__ import annotations

import argparse
from typing import Any

from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.cli.options import EPILOG, image_size, positive_float, positive_int
from visionssl.data.dataset import stored_size
from visionssl.errors import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``eval knn`` and ``eval linear`` to the ``visionssl`` command line."""
    p = sub.add_parser("eval", help="evaluate a pretrained backbone (kNN, linear probe)", epilog=EPILOG)
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="{knn,linear}")
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
