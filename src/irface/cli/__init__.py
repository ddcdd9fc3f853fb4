"""`irface <subcommand>`: argument parsing only; each subcommand's module calls the library.

Each module in this package defines `register(subparsers)` (adds its parser and sets `func`) so
subcommands are added without touching this file's logic.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from irface import __version__
from irface.errors import UserError

# Order shown in `irface --help`.
SUBCOMMANDS = ("train", "eval", "export", "detect", "align", "embed", "verify", "calibrate", "gallery", "cluster", "data", "convert",
               "bench", "serve", "demo")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="irface",
        description="Train, evaluate, export and serve face-recognition embedding models (IResNet / ArcFace).",
    )
    parser.add_argument("--version", action="version", version=f"irface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"irface.cli.{name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad usage or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        # No command, or a command of actions (data, bench) given none: that parser's help.
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"irface {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The system refused a file operation (a full disk, a permission, a file where a folder should
        # be): one line, as for bad input; -v adds the traceback.
        logging.getLogger(__name__).debug("traceback", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"irface {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"irface {args.command}: interrupted", file=sys.stderr)
        return 130
