"""``visionssl export RUN_DIR``: a run's backbone as safetensors + sha256 + a ready model_zoo.yaml entry."""

from __future__ import annotations

import argparse

from visionssl.backbones.trust import TRUST_CODE_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``export`` to the ``visionssl`` command line."""
    p = subparsers.add_parser(
        "export",
        help="write a run's backbone as safetensors + sha256 + a ready model_zoo.yaml entry",
        description="Exports the backbone of a visionssl run for publishing: RUN_DIR/export/NAME.safetensors, "
        "its .sha256, and NAME.zoo.yaml (use it with VISIONSSL_ZOO=...).",
    )
    p.add_argument("run_dir", help="a run directory (or one of its checkpoint files)")
    p.add_argument(
        "--out", default=None, help="the .safetensors file to write (default RUN_DIR/export/NAME.safetensors)"
    )
    p.add_argument("--name", default=None, help="the zoo name (default: the run directory's name)")
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from visionssl.zoo.export import export_run

    exported = export_run(args.run_dir, args.out, name=args.name, trust_code=args.trust_code)
    print(
        f"weights: {exported.path}\nsha256:  {exported.sha256}  ({exported.sha256_path})\nentry:   {exported.entry_path}"
    )
    print(f"try it:  VISIONSSL_ZOO={exported.entry_path} visionssl zoo info {exported.entry['name']}")
    return 0
