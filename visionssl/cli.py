"""The ``visionssl`` command line: pretrain, evaluate, list methods and backbones, zoo, benchmarks.

Run ``visionssl COMMAND --help`` for every option of a command.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable

from visionssl.backbones.trust import TRUST_CODE_HELP

EPILOG = "Docs: README.md. Every config key can be overridden as KEY=VALUE, e.g. optim.lr=0.5 train.knn_every=5."


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


# ----------------------------------------------------------------------------- pretrain
def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain a backbone with a self-supervised method",
        description="Pretrain a backbone with a self-supervised method. The method's recipe "
        "(visionssl/configs/METHOD.yaml) gives the defaults; options and KEY=VALUE overrides change them.",
        epilog=EPILOG,
    )
    p.add_argument("--method", default=None, help="registered method (see `visionssl methods`; default: simclr, or the --config's)")
    p.add_argument("--config", default=None, help="a recipe name (e.g. simclr_imagenet) or a YAML file")
    p.add_argument("--backbone", default=None, help="registered backbone, any timm model, or module:function / file.py:function")
    p.add_argument("--data", default=None, help="dataset: elpv, elpv:type, PATH (ImageFolder), cifar10:PATH, stl10:PATH, synthetic[:N]")
    p.add_argument("--epochs", type=positive_int, default=None, help="number of training epochs")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per step, over all processes under torchrun (optim.batch_size)")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate for batch 256 (optim.lr)")
    p.add_argument("--optimizer", choices=("sgd", "lars", "adamw"), default=None, help="optim.name")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="side of the views fed to the backbone (augment.image_size); images are kept at 1.125x this")
    p.add_argument("--device", default=None, help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=None, help="random seed (train.seed)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--out", required=True, help="run directory: config, metrics.jsonl, TensorBoard events, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are removed first); without it a non-empty --out is refused")
    p.add_argument("--trust-code", action="store_true",
                   help="allow a backbone named as code (module:function, file.py:function) by the --config file or the "
                        "resumed run's config; not needed for --backbone, nor to resume your own run")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (reported) instead of stopping")
    p.add_argument("--deterministic", action="store_true", help="bit-identical runs (slower on GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=0.5 method.temperature=0.2")
    p.set_defaults(run=run_pretrain)


def pretrain_overrides(args: argparse.Namespace) -> list[str]:
    """Turns the pretrain options into config overrides (explicit KEY=VALUE ones come last and win)."""
    o: list[str] = []
    if args.backbone:
        backbone = args.backbone
        file, sep, fn = backbone.rpartition(":")
        if sep and file.endswith(".py"):
            backbone = f"{Path(file).expanduser().resolve()}:{fn}"  # keep runs loadable from any directory
        o.append(f"backbone.name={backbone}")
    pairs = {
        "data.name": args.data, "train.epochs": args.epochs, "optim.batch_size": args.batch_size, "optim.lr": args.lr,
        "optim.name": args.optimizer, "train.device": args.device, "train.seed": args.seed, "train.num_threads": args.threads,
    }
    o += [f"{k}={v}" for k, v in pairs.items() if v is not None]
    if args.image_size:
        o += [f"augment.image_size={args.image_size}", f"data.image_size={math.ceil(args.image_size * 1.125)}"]
    if args.skip_bad_images:
        o.append("data.skip_bad_images=true")
    if args.deterministic:
        o.append("train.deterministic=true")
    if args.no_progress:
        o.append("train.progress=false")
    return o + [f"out={args.out}"] + list(args.overrides)


def run_pretrain(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from visionssl.engine.rundir import check_run_dir, claim_run_dir

    if int(os.environ.get("RANK", "0")):  # under torchrun rank 0 alone checks, locks and writes the run directory
        if not args.out.strip():
            check_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        claim = contextlib.nullcontext()
    else:
        claim = claim_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    with claim:
        return _pretrain(args)


def _pretrain(args: argparse.Namespace) -> int:
    from visionssl.backbones.trust import check_backbone_spec, is_code_spec, run_trusts
    from visionssl.engine import Trainer, load_config

    config = args.config
    if args.resume and config is None and (Path(args.out) / "config.yaml").is_file():
        config = str(Path(args.out) / "config.yaml")  # a resumed run keeps its own config
    overrides = pretrain_overrides(args)
    cfg = load_config(method=args.method if args.method or config else "simclr", config=config, overrides=overrides)
    name = str(cfg.backbone.name)
    given = any(o.startswith("backbone.name=") for o in overrides)  # --backbone or a KEY=VALUE: the user's own words
    if is_code_spec(name) and not (given or args.trust_code or (args.resume and run_trusts(args.out, name))):
        check_backbone_spec(name, {}, source=f"the config {config}")  # raises UntrustedCodeError, one line
    trainer = Trainer(cfg)
    if trainer.rank:  # under torchrun, rank 0 alone reports (and writes the run directory)
        trainer.fit(resume=args.resume)
        return 0
    where = f"{trainer.device} x {trainer.world_size} processes" if trainer.world_size > 1 else str(trainer.device)
    print(f"pretraining {cfg.method['name']} on {cfg.data.name} ({len(trainer.train_set)} images) with {cfg.backbone.name} "
          f"for {cfg.train.epochs} epochs on {where}; run directory: {cfg.out}", flush=True)
    if trainer.train_set.skipped:
        from visionssl.data.decode import display_path

        print(f"skipped {len(trainer.train_set.skipped)} unreadable images:", flush=True)
        for path, reason in trainer.train_set.skipped:
            print(f"  {display_path(path)}: {reason}")
    result = trainer.fit(resume=args.resume)
    if result.get("stopped_by"):  # preempted (SIGTERM) or Ctrl-C: a clean stop, the run goes on with --resume
        print(f"stopped by {result['stopped_by']} at step {result['step']}; "
              f"checkpoint: {trainer.checkpoint_path}; resume with: {trainer.resume_command}", flush=True)
        return 0
    if "knn/top1" in result:
        print(f"done: epoch {result['epoch']}, kNN top-1 {result['knn/top1']:.2f}% on {cfg.data.eval or cfg.data.name} (test split)")
    print(f"checkpoint: {trainer.checkpoint_path}")
    return 0


# ------------------------------------------------------------------------------- eval
def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a pretrained backbone (kNN, linear probe)", epilog=EPILOG)
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="{knn,linear}")
    k = esub.add_parser(
        "knn", help="FAISS kNN accuracy of frozen features",
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
    p.add_argument("--image-size", type=positive_int, default=None, help="view size (default: the run's augment.image_size)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-weights baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-weights baseline")
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.add_argument("--layer", default="final",
                   help="features of this stage, globally average-pooled: final (default) or stage0..stageN of a timm "
                        "backbone's feature_info (e.g. stage3 of a ResNet is layer3); pretext methods are best judged "
                        "at their best stage")


def load_for_eval(checkpoint: str, trust_code: bool = False) -> tuple[Any, dict[str, Any], tuple[str, dict] | None]:
    """(backbone, run config or {}, (backbone name, kwargs) for the random baseline) from a run directory,
    checkpoint file, exported .safetensors or zoo name."""
    from visionssl import zoo
    from visionssl.engine.checkpoint import load_checkpoint

    backbone = zoo.load_backbone(checkpoint, trust_code=trust_code)  # checks the backbone the file names
    path = Path(checkpoint).expanduser()
    if path.exists() and path.suffix == ".safetensors":
        return backbone, {}, zoo.safetensors_backbone(path, trust_code=trust_code)
    if path.exists():
        config = load_checkpoint(path)["config"]  # load_backbone checked its shape
        spec = config["backbone"]
        return backbone, {k: v if isinstance(v, dict) else {} for k, v in config.items()}, (spec["name"], spec.get("kwargs") or {})
    entry = zoo.info(checkpoint)
    return backbone, {}, (entry.backbone, dict(entry.backbone_kwargs))


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from visionssl import eval as eval_lib
    from visionssl.backbones import create_backbone
    from visionssl.data import load_dataset
    from visionssl import distributed
    from visionssl.engine.trainer import resolve_device
    from visionssl.eval.distributed import extract_features_distributed
    from visionssl.eval.layers import with_layer

    device = distributed.init(resolve_device(args.device))  # under torchrun the ranks share the extraction
    backbone, cfg, baseline = load_for_eval(args.checkpoint, args.trust_code)
    with_layer(backbone, args.layer)  # a bad --layer fails here, naming the valid stages, before any data loads
    data_cfg, aug_cfg = cfg.get("data", {}), cfg.get("augment", {})
    spec = args.data or data_cfg.get("eval") or data_cfg.get("name") or "elpv"
    image_size = args.image_size or aug_cfg.get("image_size") or 224
    stored = data_cfg.get("image_size") if spec == data_cfg.get("name") else None
    stored = stored or math.ceil(image_size * 1.125)
    train, test = load_dataset(spec, "train", stored), load_dataset(spec, "test", stored)
    if train.targets is None:
        raise ValueError(f"dataset {spec!r} has no labels to evaluate with")
    models = [(args.checkpoint, backbone)]
    if not args.no_baseline:
        torch.manual_seed(args.seed)
        name, kwargs = baseline  # the checkpoint's own architecture, already checked by load_for_eval
        models.append((f"random weights ({name})", create_backbone(name, **kwargs)))
    if distributed.is_main():
        layer = "" if args.layer == "final" else f", features of {args.layer}"
        print(f"{args.evaluator} on {spec} (label: {train.label}), {len(train)} train / {len(test)} test images at {image_size} px{layer}")
    width = max(len(n) for n, _ in models)
    for name, model in models:
        feats = [extract_features_distributed(with_layer(model, args.layer), ds, batch_size=args.batch_size, image_size=image_size, device=device,
                                              dst=0) for ds in (train, test)]
        if not distributed.is_main():  # rank 0 received the features and evaluates
            continue
        if args.evaluator == "knn":
            result = eval_lib.knn(feats[0][0], feats[0][1], feats[1][0], feats[1][1], k=min(args.k, len(train)),
                                  temperature=args.temperature)
        else:
            result = eval_lib.linear_probe(feats[0][0], feats[0][1], feats[1][0], feats[1][1])
        print(f"  {name:<{width}}  top-1 {result['top1']:6.2f}%  top-5 {result['top5']:6.2f}%", flush=True)
    return 0


# ---------------------------------------------------------------------- listings
def add_listing_parsers(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("methods", help="list the registered methods")
    m.set_defaults(run=run_methods)
    b = sub.add_parser("backbones", help="list registered backbones and timm models (wildcards allowed)")
    b.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*' (default: all)")
    b.set_defaults(run=run_backbones)
    r = sub.add_parser("recipes", help="list the packaged YAML recipes")
    r.set_defaults(run=run_recipes)


def run_methods(args: argparse.Namespace) -> int:
    from visionssl.methods import METHODS, list_methods

    for name in list_methods():
        doc = (METHODS.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:<14} {doc[0] if doc else ''}")
    return 0


def run_backbones(args: argparse.Namespace) -> int:
    from visionssl.backbones import BACKBONES, list_backbones

    names = list_backbones(args.pattern)
    if not names:
        print(f"no backbone matches {args.pattern!r}", file=sys.stderr)
        return 1
    for name in names:
        print(f"{name}{'  (visionssl)' if name in BACKBONES else ''}")
    return 0


def run_recipes(args: argparse.Namespace) -> int:
    from visionssl.engine.config import list_recipes

    print("\n".join(list_recipes()))
    return 0


# ------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionssl", description="Self-supervised visual representation learning on any timm backbone.", epilog=EPILOG,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_pretrain_parser(sub)
    add_eval_parser(sub)
    add_listing_parsers(sub)
    for add in plugin_parsers():
        add(sub)
    return parser


def plugin_parsers() -> list[Callable[[argparse._SubParsersAction], None]]:
    """``add_parser`` functions of the packages that own a subcommand (zoo, export, benchmark)."""
    import importlib

    adders = []
    for module in ("visionssl.zoo.cli", "visionssl.eval.benchmark"):
        try:
            adders.append(importlib.import_module(module).add_parser)
        except (ImportError, AttributeError):
            continue
    return adders


def expected_errors() -> tuple[type[BaseException], ...]:
    from visionssl.data import BadImageError
    from visionssl.engine import CheckpointError, ConfigError, NonFiniteLossError
    from visionssl.registry import RegistryError
    from visionssl.zoo import ZooError

    return (ConfigError, RegistryError, BadImageError, CheckpointError, NonFiniteLossError, ZooError, FileNotFoundError,
            ValueError, TypeError, OSError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("visionssl: interrupted", file=sys.stderr)
        return 130
    except expected_errors() as exc:
        if args.debug:
            raise
        print(f"visionssl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
