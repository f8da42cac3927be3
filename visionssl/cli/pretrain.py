"""``visionssl pretrain``: options -> config overrides -> ``Trainer``, in a claimed run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from visionssl.cli.options import EPILOG, positive_float, positive_int
from visionssl.data.dataset import STORED_RATIO, stored_size
from visionssl.engine.optim import OPTIMIZERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``pretrain`` to the ``visionssl`` command line."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone with a self-supervised method",
        description="Pretrain a backbone with a self-supervised method. The method's recipe "
        "(visionssl/configs/METHOD.yaml) gives the defaults; options and KEY=VALUE overrides change them.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--method", default=None, help="registered method (see `visionssl methods`; default: simclr, or the --config's)"
    )
    p.add_argument("--config", default=None, help="a recipe name (e.g. simclr_imagenet) or a YAML file")
    p.add_argument(
        "--backbone", default=None, help="registered backbone, any timm model, or module:function / file.py:function"
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset: elpv, elpv:type, PATH (ImageFolder), cifar10:PATH, stl10:PATH, synthetic[:N]",
    )
    p.add_argument(
        "--init",
        default=None,
        help="the backbone's starting weights (backbone.init): random (default), timm (the timm model's own "
        "pretrained weights, from the local cache only), a zoo name, or a .safetensors file, hub folder, run "
        "directory or .pt checkpoint; loaded strictly, the heads start fresh, the sha256 is recorded",
    )
    p.add_argument("--epochs", type=positive_int, default=None, help="number of training epochs")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per step, over all processes under torchrun (optim.batch_size)",
    )
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate for batch 256 (optim.lr)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="optim.name")
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help=f"side of the views fed to the backbone (augment.image_size); images are kept at {STORED_RATIO}x this",
    )
    p.add_argument("--device", default=None, help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=None, help="random seed (train.seed)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--out", required=True, help="run directory: config, metrics.jsonl, TensorBoard events, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its files are removed once the new config, backbone and data are "
        "checked); without it a non-empty --out is refused",
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a backbone named as code (module:function, file.py:function) by the --config file, the "
        "resumed run's config or the --init file; not needed for --backbone, nor to resume your own run",
    )
    p.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images (reported) instead of stopping"
    )
    p.add_argument("--deterministic", action="store_true", help="bit-identical runs (slower on GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=0.5 method.temperature=0.2"
    )
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
    if args.init:
        init = Path(args.init).expanduser()
        init = str(init.resolve()) if init.exists() else args.init  # a path: the run records where, from anywhere
        o.append("backbone.init='" + init.replace("'", "''").replace("${", "\\${") + "'")  # read as exactly that
    pairs = {
        "data.name": data_value(args.data) if args.data is not None else None,
        "train.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "optim.name": args.optimizer,
        "train.device": args.device,
        "train.seed": args.seed,
        "train.num_threads": args.threads,
    }
    o += [f"{k}={v}" for k, v in pairs.items() if v is not None]
    if args.image_size:
        o += [f"augment.image_size={args.image_size}", f"data.image_size={stored_size(args.image_size)}"]
    if args.skip_bad_images:
        o.append("data.skip_bad_images=true")
    if args.deterministic:
        o.append("train.deterministic=true")
    if args.no_progress:
        o.append("train.progress=false")
    return o + [f"out={args.out}"] + list(args.overrides)


def data_value(spec: str) -> str:
    """``--data SPEC`` as the value of a ``data.name=...`` override, read as exactly SPEC (a folder ``d #1``
    would otherwise be read as ``d``, ``a: b`` as a mapping). A name that is not UTF-8 cannot be written to
    the run's config.yaml: ``DataError`` names it.

    Example:
        >>> from omegaconf import OmegaConf
        >>> OmegaConf.from_dotlist(["data.name=" + data_value("/data/d #1")]).data.name
        '/data/d #1'
    """
    from visionssl.data.decode import display_path
    from visionssl.errors import DataError

    try:
        spec.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"--data {display_path(spec)}: the name is not valid UTF-8 and the run's config.yaml cannot record it; "
            "rename the folder, or pass a link to it whose name is UTF-8 (ln -s)"
        ) from None
    return "'" + spec.replace("'", "''").replace("${", "\\${") + "'"  # YAML single quotes; no interpolation


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
    import functools

    from omegaconf import OmegaConf

    from visionssl.backbones.trust import check_backbone_spec
    from visionssl.engine import Trainer, load_config
    from visionssl.errors import ConfigError
    from visionssl.zoo import init_weights

    if args.resume and args.init:
        raise ConfigError(
            "--init starts a new run from those weights; --resume continues the run's own checkpoint (its "
            "backbone.init is not loaded again): drop one of them"
        )
    config = args.config
    if args.resume and config is None and (Path(args.out) / "config.yaml").is_file():
        config = str(Path(args.out) / "config.yaml")  # a resumed run keeps its own config
    overrides = pretrain_overrides(args)
    cfg = load_config(method=args.method if args.method or config else "simclr", config=config, overrides=overrides)
    name = str(cfg.backbone.name)
    given = any(o.startswith("backbone.name=") for o in overrides)  # --backbone or a KEY=VALUE: the user's own words
    if config is not None:  # a config file's backbone and arguments are data, checked like a checkpoint's
        kwargs = OmegaConf.to_container(cfg.backbone.kwargs)
        yours = [o for o in overrides if o.startswith("backbone.kwargs")]  # the user's own words again
        from_file = {
            k: v
            for k, v in kwargs.items()
            if not any(o.startswith(("backbone.kwargs=", f"backbone.kwargs.{k}=")) for o in yours)
        }
        check_backbone_spec(  # one line; a resumed run's own code is imported from the files its record vouches for
            name,
            from_file,
            source=f"the config {config}",
            trust_code=given or args.trust_code,
            run_dir=args.out if args.resume else None,
        )
    trainer = Trainer(cfg, resume=args.resume, init_loader=functools.partial(init_weights, trust_code=args.trust_code))
    if trainer.rank:  # under torchrun, rank 0 alone reports (and writes the run directory)
        trainer.fit(resume=args.resume)
        return 0
    if args.overwrite:  # only now, with the config, the backbone and the data checked, is the old run removed
        from visionssl.engine.rundir import clear_run_dir

        if cfg.train.knn_every >= 0:
            trainer.load_eval_sets()  # read at the first evaluation otherwise: a bad data.eval would fail after
        clear_run_dir(args.out)
    where = f"{trainer.device} x {trainer.world_size} processes" if trainer.world_size > 1 else str(trainer.device)
    print(
        f"pretraining {cfg.method['name']} on {cfg.data.name} ({len(trainer.train_set)} images) with {cfg.backbone.name} "
        f"for {cfg.train.epochs} epochs on {where}{_init_text(trainer)}; run directory: {cfg.out}",
        flush=True,
    )
    if trainer.train_set.skipped:
        from visionssl.data.decode import display_path

        print(f"skipped {len(trainer.train_set.skipped)} unreadable images:", flush=True)
        for path, reason in trainer.train_set.skipped:
            print(f"  {display_path(path)}: {reason}")
    result = trainer.fit(resume=args.resume)
    if result.get("stopped_by"):  # preempted (SIGTERM) or Ctrl-C: a clean stop, the run goes on with --resume
        print(
            f"stopped by {result['stopped_by']} at step {result['step']}; "
            f"checkpoint: {trainer.checkpoint_path}; resume with: {trainer.resume_command}",
            flush=True,
        )
        return 0
    if "knn/top1" in result:
        print(
            f"done: epoch {result['epoch']}, kNN top-1 {result['knn/top1']:.2f}% on {cfg.data.eval or cfg.data.name} (test split)"
        )
    print(f"checkpoint: {trainer.checkpoint_path}")
    return 0


def _init_text(trainer: Any) -> str:
    record = trainer.init_record
    return f" from {record['init']} (sha256 {record['sha256'][:12]})" if record else ""
