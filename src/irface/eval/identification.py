"""Identification (1:N) metrics, as NIST's FRVT 1:N reports define them (NIST IR 8271).

Inputs come from searches, not from a full score matrix (a gallery may hold millions of faces):
- mated searches (the probe's person is enrolled): the rank of the mate among the returned
  identities (1-based; 0 when it was not returned) and the mate's score;
- non-mated searches (the person is not enrolled): the best score returned (-inf for an empty gallery).

Closed set: rank-k = fraction of mated searches whose mate is at rank <= k.
Open set, at a threshold T (a candidate counts when its score is above T, as `irface verify` decides):
FPIR(T) = fraction of non-mated searches with any candidate above T; FNIR(T) = fraction of mated
searches whose mate is not at rank 1 with a score above T; TPIR = 1 - FNIR. The threshold for a target
FPIR is the lowest one whose FPIR does not exceed the target: the (floor(target * non-mated) + 1)-th
highest non-mated score. With fewer than 1 / target non-mated searches only T = the highest
non-mated score is possible (FPIR 0): the report says how many there were.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

FPIR_TARGETS = (1e-2, 1e-1)


def rank_k(mate_ranks: Sequence[int], k: int) -> Optional[float]:
    """Fraction of mated searches with the mate at rank 1..k (None without mated searches)."""
    r = np.asarray(mate_ranks, dtype=np.int64)
    if not len(r):
        return None
    return float(np.mean((r >= 1) & (r <= k)))


def threshold_at_fpir(nonmated_scores: Sequence[float], fpir: float) -> tuple[float, float]:
    """(threshold, FPIR actually reached): the lowest threshold whose FPIR is at most `fpir`."""
    s = np.sort(np.asarray(nonmated_scores, dtype=np.float64))[::-1]
    if not len(s):
        raise ValueError("no non-mated searches: FPIR is undefined")
    allowed = math.floor(fpir * len(s) + 1e-9)
    if allowed >= len(s):
        return -math.inf, 1.0
    t = float(s[allowed])
    return t, float(np.mean(s > t))


def tpir_at_fpir(mate_ranks: Sequence[int], mate_scores: Sequence[float], nonmated_scores: Sequence[float],
                 fpir: float, rank: int = 1) -> dict[str, Any]:
    """TPIR (mate at rank <= `rank` and above the threshold) at the threshold for target `fpir`."""
    r = np.asarray(mate_ranks, dtype=np.int64)
    m = np.asarray(mate_scores, dtype=np.float64)
    t, reached = threshold_at_fpir(nonmated_scores, fpir)
    hit = (r >= 1) & (r <= rank) & (m > t)
    return {"fpir": fpir, "tpir": float(np.mean(hit)) if len(r) else None, "threshold": t, "fpir_reached": reached}


def identification_report(mate_ranks: Sequence[int], mate_scores: Sequence[float],
                          nonmated_scores: Sequence[float], fpirs: Sequence[float] = FPIR_TARGETS,
                          ranks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Every figure at once: `rank_1`, `rank_5`, and `tpir_at_fpir` keyed "1e-02", "1e-01"."""
    out: dict[str, Any] = {"mated": len(mate_ranks), "nonmated": len(nonmated_scores)}
    for k in ranks:
        out[f"rank_{k}"] = rank_k(mate_ranks, k)
    out["tpir_at_fpir"] = {f"{f:.0e}": (tpir_at_fpir(mate_ranks, mate_scores, nonmated_scores, f)
                                        if len(nonmated_scores) else None) for f in fpirs}
    return out
