"""``visionssl methods|backbones|recipes``: what is registered and packaged."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``methods``, ``backbones`` and ``recipes`` to the ``visionssl`` command line."""
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
