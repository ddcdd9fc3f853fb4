"""Verification accuracy of an exported model next to its PyTorch source, on `.bin` sets.

The protocol itself is `irface.eval.evaluate_bin(embed_fn, path, batch_size)`; this module only runs
it twice and lines the figures up (used for the int8 report of `irface export --eval-bin`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from irface.errors import UserError
from irface.infer.model_file import Embedder

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):  # eval's TargetResult: compare its figures, not its repr
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _delta(a: Any, b: Any) -> Any:
    """b - a for every number both results hold at the same place (None where there is none)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = {k: _delta(a[k], b[k]) for k in a if k in b}
        return {k: v for k, v in out.items() if v is not None} or None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return b - a
    return None


def compare_accuracy(reference: Embedder, candidate: Embedder, bins: Sequence[str | Path],
                     batch_size: int = 64) -> list[dict[str, Any]]:
    """For each `.bin`: the protocol's figures for `reference` and `candidate`, and candidate - reference."""
    try:
        from irface.eval import evaluate_bin
    except ImportError:
        raise UserError("--eval-bin needs irface.eval.evaluate_bin, which this install does not have") from None
    report = []
    for path in bins:
        ref = _jsonable(evaluate_bin(reference.embed, str(path), batch_size))
        got = _jsonable(evaluate_bin(candidate.embed, str(path), batch_size))
        entry = {"bin": str(path), "reference": ref, "exported": got, "delta": _delta(ref, got)}
        log.info("%s: reference %s, exported %s", path, ref, got)
        report.append(entry)
    return report
