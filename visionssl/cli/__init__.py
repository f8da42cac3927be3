"""The ``visionssl`` command line: pretrain, evaluate, list methods and backbones, zoo, export, benchmarks.

One module per command group (``pretrain``, ``eval``, ``listing``, ``benchmark``, ``zoo``, ``export``); each
has ``add_parser(subparsers)``, whose commands set ``run=handler`` (``handler(args) -> exit code``).
Run ``visionssl COMMAND --help`` for every option of a command.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from visionssl.cli import benchmark, embed, eval, export, listing, pretrain, zoo  # noqa: A004  (the eval command group)
from visionssl.cli.options import EPILOG, positive_float, positive_int  # noqa: F401  (re-exported)
from visionssl.errors import UserError
from visionssl.files import atomic_write, visionssl_home

COMMAND_GROUPS = (pretrain, eval, listing, zoo, export, benchmark, embed)


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


def main(argv: list[str] | None = None) -> int:
    """Runs one ``visionssl`` command; returns its exit code (0 done, 2 a user error, 1 an internal error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("visionssl: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        if args.debug:
            raise
        print(f"visionssl: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not a bad input: say so, keep the traceback
        if args.debug:
            raise
        where = write_traceback(exc)
        print(
            f"visionssl: internal error: {type(exc).__name__}: {one_line(exc)} (the traceback is in {where}; "
            f"rerun with --debug to see it, and please report it)",
            file=sys.stderr,
        )
        return 1


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none).

    Example:
        >>> one_line(ValueError("bad\\nsecond line")), one_line(KeyError())
        ('bad', 'KeyError')
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_traceback(exc: BaseException) -> str:
    """Writes ``exc``'s traceback to ``$VISIONSSL_HOME/last_error.txt``; returns where it went."""
    text = "".join(traceback.format_exception(exc))
    path = visionssl_home() / "last_error.txt"
    try:
        atomic_write(path, text)
    except OSError:
        return "nowhere (the cache folder is not writable; use --debug)"
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
