"""The ``visionssl`` command line: pretrain, evaluate, list methods and backbones, zoo, export, benchmarks.

One module per command group (``pretrain``, ``eval``, ``listing``, ``benchmark``, ``zoo``, ``export``); each
has ``add_parser(subparsers)``, whose commands set ``run=handler`` (``handler(args) -> exit code``).
Run ``visionssl COMMAND --help`` for every option of a command.
"""

from __future__ import annotations

import argparse
import logging
import sys

from visionssl.cli import benchmark, eval, export, listing, pretrain, zoo  # noqa: A004  (the eval command group)
from visionssl.cli.options import EPILOG, positive_float, positive_int  # noqa: F401  (re-exported)

COMMAND_GROUPS = (pretrain, eval, listing, zoo, export, benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionssl",
        description="Self-supervised visual representation learning on any timm backbone.",
        epilog=EPILOG,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parser(sub)
    return parser


def expected_errors() -> tuple[type[BaseException], ...]:
    from visionssl.data import BadImageError
    from visionssl.engine import CheckpointError, ConfigError, NonFiniteLossError
    from visionssl.registry import RegistryError
    from visionssl.zoo import ZooError

    return (
        ConfigError,
        RegistryError,
        BadImageError,
        CheckpointError,
        NonFiniteLossError,
        ZooError,
        FileNotFoundError,
        ValueError,
        TypeError,
        OSError,
    )


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
