"""`--json [FILE]` for commands that report figures: one JSON object to FILE, or alone on stdout."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Optional

from irface.utils import atomic_write

STDOUT = "-"


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", nargs="?", const=STDOUT, default=None, metavar="FILE",
                        help="write the figures as one JSON object to FILE (or to stdout, and nothing else there)")


def _clean(value: Any) -> Any:
    # JSON has no inf/nan: report them as strings rather than writing invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def skipped_text(report: dict[str, Any]) -> str:
    """The line that closes a command's summary when it left inputs out: "\nskipped N: reason; ..." (or "")."""
    skipped = report.get("skipped") or []
    return f"\nskipped {len(skipped)}: " + "; ".join(s["reason"] for s in skipped) if skipped else ""


def emit(report: dict[str, Any], json_target: Optional[str], text: Optional[str]) -> None:
    """Print `text` (human lines; None: the command printed its own) unless the JSON goes to stdout;
    write the JSON where asked."""
    if text is not None and json_target != STDOUT:
        print(text)
    if json_target is None:
        return
    body = json.dumps(_clean(report), indent=2, sort_keys=False) + "\n"
    if json_target == STDOUT:
        sys.stdout.write(body)
    else:
        with atomic_write(json_target, "w") as f:
            f.write(body)
