"""Progress bars for long data jobs: on stderr, and only when stderr is a terminal (never on stdout)."""

from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], desc: str = "", total: Optional[int] = None, unit: str = "it",
                 enabled: Optional[bool] = None) -> Iterable[T]:
    """Wrap `iterable` in a tqdm bar on stderr; a no-op when stderr is not a terminal or tqdm is missing."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a bar is never worth a crash
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True)
