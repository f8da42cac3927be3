"""``visionssl export RUN_DIR``: a run's backbone as safetensors + sha256 + a ready model_zoo.yaml entry, or
(``--format hub``) as a timm / Hugging Face folder (config.json, model.safetensors, README.md model card)."""

from __future__ import annotations

import argparse
from pathlib import Path

from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.errors import ConfigError

FORMATS = ("visionssl", "hub")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``export`` to the ``visionssl`` command line."""
    p = subparsers.add_parser(
        "export",
        help="write a run's backbone as safetensors + sha256 + a zoo entry, or as a timm / Hugging Face folder",
        description="Exports the backbone of a visionssl run for publishing. --format visionssl (default): "
        "RUN_DIR/export/NAME.safetensors, its .sha256, and NAME.zoo.yaml (use it with VISIONSSL_ZOO=...). "
        "--format hub: a folder (config.json, model.safetensors, README.md) that "
        "timm.create_model('local-dir:DIR', pretrained=True, num_classes=0) loads and huggingface_hub uploads; "
        "it needs a timm backbone.",
    )
    p.add_argument("run_dir", help="a run directory (or one of its checkpoint files)")
    p.add_argument("--format", default="visionssl", help="visionssl (default) or hub (timm's Hugging Face folder)")
    p.add_argument(
        "--out",
        default=None,
        help="the .safetensors file to write (default RUN_DIR/export/NAME.safetensors); "
        "with --format hub the folder (default RUN_DIR/export/NAME)",
    )
    p.add_argument("--name", default=None, help="the zoo name (default: the run directory's name)")
    p.add_argument("--overwrite", action="store_true", help="--format hub: replace a non-empty --out folder")
    p.add_argument("--license", default=None, help="--format hub: the model card's license, e.g. apache-2.0")
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from visionssl.zoo.export import export_hub, export_run

    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format!r} is not an export format; valid: {', '.join(FORMATS)}")
    if args.format == "hub":
        out = args.out
        if out is None and args.name is not None:
            run = Path(args.run_dir)
            out = (run if run.is_dir() else run.parent) / "export" / args.name
        hub = export_hub(args.run_dir, out, overwrite=args.overwrite, license=args.license, trust_code=args.trust_code)
        print(f"folder:  {hub.folder}\nsha256:  {hub.sha256}  ({hub.weights_path.name})")
        print(
            f"try it:  python -c \"import timm; timm.create_model('local-dir:{hub.folder}', pretrained=True, num_classes=0)\""
        )
        return 0
    if args.overwrite or args.license:
        raise ConfigError("--overwrite and --license apply to --format hub only")
    exported = export_run(args.run_dir, args.out, name=args.name, trust_code=args.trust_code)
    print(
        f"weights: {exported.path}\nsha256:  {exported.sha256}  ({exported.sha256_path})\nentry:   {exported.entry_path}"
    )
    print(f"try it:  VISIONSSL_ZOO={exported.entry_path} visionssl zoo info {exported.entry['name']}")
    return 0
