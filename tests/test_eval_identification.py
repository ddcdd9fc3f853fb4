"""1:N identification figures (rank-k, TPIR at FPIR) against slow per-probe loops of NIST's definitions."""

import numpy as np
import pytest

from irface.eval.identification import mate_ranks, rank_k, tpir_at_fpir
from irface.eval.rates import threshold_at_rate


def _slow(sim, mates, ks, fpirs):
    """Loop over probes: rank = 1 + entries strictly above the mate; FPIR(T) = share of non-mated top scores >= T."""
    ranks, scores, tops = [], [], []
    for row, m in zip(sim, mates):
        if m >= 0:
            ranks.append(1 + sum(1 for j, v in enumerate(row) if v > row[m] and j != m))
            scores.append(row[m])
        else:
            tops.append(max(row))
    rank_figs = {k: sum(r <= k for r in ranks) / len(ranks) for k in ks}
    tpir = {}
    for f in fpirs:
        # The lowest candidate threshold (a non-mated top score, or -inf) whose FPIR, counted as
        # "score > threshold", stays within f; TPIR counts rank-1 mates strictly above it.
        best = None
        for t in sorted(set(tops)) + [float("inf")]:
            if sum(v > t for v in tops) <= f * len(tops) + 1e-9:
                best = t
                break
        if int(f * len(tops) + 1e-9) >= len(tops):
            best = -np.inf
        tpir[f] = None if int(f * len(tops) + 1e-9) < 1 else sum(
            r == 1 and s > best for r, s in zip(ranks, scores)) / len(ranks)
    return rank_figs, tpir


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figures_equal_slow_definitions(seed):
    rng = np.random.default_rng(seed)
    probes, gallery = 300, 40
    sim = np.round(rng.normal(0, 0.3, (probes, gallery)), 2)  # rounded: many ties
    mates = rng.integers(-1, gallery, probes)
    sim[mates >= 0, mates[mates >= 0]] += 0.5
    ranks, mate_score, top = mate_ranks(sim, mates)
    ks, fpirs = (1, 5, 10), (1e-2, 1e-1, 0.5)
    want_rank, want_tpir = _slow(sim, mates, ks, fpirs)
    assert rank_k(ranks, ks) == pytest.approx(want_rank, abs=1e-12)
    got = tpir_at_fpir(mate_score, ranks, top[mates < 0], fpirs)
    for f in fpirs:
        assert (got[f] is None) == (want_tpir[f] is None)
        if got[f] is not None:
            assert got[f] == pytest.approx(want_tpir[f], abs=1e-12)


def test_unmeasurable_fpir_and_ties_with_the_mate():
    sim = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.3], [0.5, 0.4, 0.1]])
    ranks, score, top = mate_ranks(sim, np.array([1, 1, -1]))
    assert ranks.tolist() == [1, 1, 0]  # a tie with the mate does not push it down
    assert top.tolist() == [0.9, 0.3, 0.5]
    assert tpir_at_fpir(score, ranks, top[2:], (0.5,)) == {0.5: None}  # one non-mated probe: 1e-0 at best
    assert threshold_at_rate(top[2:], 1.0) == -np.inf
    assert tpir_at_fpir(score, ranks, top[2:], (1.0,)) == {1.0: 1.0}
