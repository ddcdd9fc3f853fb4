"""1:N identification figures on per-probe results, pure numpy (NIST's definitions).

A search of a probe against a gallery gives, per probe:
- for a mated probe (its subject is enrolled): the rank of its mate (1 = top) and the mate's score;
- for every probe: the top score over the gallery (for a non-mated probe, its highest false alarm).

`mate_ranks` derives these from a full (probes x gallery) similarity matrix; a search engine (faiss)
can produce them directly from its top-k lists. The figures:

- **rank-k** (CMC): share of mated probes whose mate is at rank <= k.
- **TPIR at FPIR** (NISTIR 8238/8271): FPIR(T) = share of non-mated probes whose top score is >= T;
  FNIR(T, R) = share of mated probes whose mate is not within rank R or scores below T;
  TPIR = 1 - FNIR. For a target FPIR f over n non-mated probes, at most floor(f n) of them may
  alarm, so T is set just above the (floor(f n) + 1)-th highest non-mated top score
  (`irface.eval.rates.threshold_at_rate`): a mate is counted when its rank is <= R and its score is
  strictly above that value. An f below 1 / n cannot be measured (None).

Ties: a mate's rank counts only the gallery entries scoring strictly higher (an entry tied with the
mate does not push it down).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from irface.eval.rates import threshold_at_rate

FPIRS = (1e-2, 1e-1)
RANKS = (1, 5, 10)


def mate_ranks(similarity: np.ndarray, mates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: (rank of the mate, 1-based; the mate's score; the top non-mate score).

    `similarity` is (probes, gallery); `mates[i]` is the gallery column of probe i's subject, or -1
    for a non-mated probe (its rank and mate score are then 0 and NaN).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    mates = np.asarray(mates, dtype=np.int64)
    if sim.ndim != 2 or mates.shape != (sim.shape[0],):
        raise ValueError(f"similarity {sim.shape} and mates {mates.shape} do not match")
    if sim.shape[1] == 0:
        raise ValueError("empty gallery")
    if ((mates < -1) | (mates >= sim.shape[1])).any():
        raise ValueError("a mate index is outside the gallery")
    rows = np.arange(sim.shape[0])
    mated = mates >= 0
    mate_score = np.full(sim.shape[0], np.nan)
    mate_score[mated] = sim[rows[mated], mates[mated]]
    ranks = np.zeros(sim.shape[0], dtype=np.int64)
    ranks[mated] = 1 + (sim[mated] > mate_score[mated, None]).sum(axis=1)
    others = sim.copy()
    others[rows[mated], mates[mated]] = -np.inf
    return ranks, mate_score, others.max(axis=1)


def rank_k(ranks: np.ndarray, ks: Sequence[int] = RANKS) -> dict[int, Optional[float]]:
    """Share of mated probes (rank >= 1; non-mated ones carry 0) whose mate is within rank k."""
    ranks = np.asarray(ranks)
    mated = ranks[ranks >= 1]
    return {int(k): (float(np.mean(mated <= k)) if len(mated) else None) for k in ks}


def tpir_at_fpir(mate_score: np.ndarray, mate_rank: np.ndarray, nonmated_top: np.ndarray,
                 fpirs: Sequence[float] = FPIRS, max_rank: int = 1) -> dict[float, Optional[float]]:
    """TPIR at each FPIR (NIST) from the mated probes' mate scores and ranks (entries with rank 0 are
    non-mated and ignored) and the non-mated probes' top scores.

    None where the FPIR cannot be measured (fewer than 1 / FPIR non-mated probes) or no probe is mated.
    """
    mate_score = np.asarray(mate_score, dtype=np.float64)
    mate_rank = np.asarray(mate_rank)
    if mate_score.shape != mate_rank.shape:
        raise ValueError(f"mate scores {mate_score.shape} and ranks {mate_rank.shape} differ")
    out: dict[float, Optional[float]] = {}
    for fpir in fpirs:
        threshold = threshold_at_rate(nonmated_top, fpir)
        mated = mate_rank >= 1
        if threshold is None or not mated.any():
            out[fpir] = None
            continue
        hit = mated & (mate_rank <= max_rank) & (mate_score > threshold)
        out[fpir] = float(hit.sum() / mated.sum())
    return out
