"""Placeholder for subcommands that are not built yet: one line, exit 2."""

from __future__ import annotations

import argparse
import sys


def register_stub(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=f"{help_text} (not built yet)", description=help_text)
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        print(f"irface {name}: not built yet", file=sys.stderr)
        return 2

    p.set_defaults(func=run)
    return p
