"""Identification metrics against values worked out by hand (NIST FRVT 1:N definitions)."""

from __future__ import annotations

import math

import pytest

from irface.eval.identification import identification_report, rank_k, threshold_at_fpir, tpir_at_fpir

# Five mated searches: mate ranks (0 = not returned) and the mate's score.
RANKS = [1, 1, 2, 0, 1]
MATE = [0.9, 0.5, 0.8, -math.inf, 0.3]
# Ten non-mated searches: their best scores. Sorted: 0.6, 0.4, 0.35, 0.2, 0.1, 0, 0, 0, 0, 0.
NONMATED = [0.1, 0.4, 0.2, 0.35, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_rank_k():
    assert rank_k(RANKS, 1) == 3 / 5
    assert rank_k(RANKS, 2) == 4 / 5 and rank_k(RANKS, 5) == 4 / 5
    assert rank_k([], 1) is None


def test_threshold_is_lowest_with_fpir_at_most_target():
    # FPIR 0.1 of 10 allows one false positive: above 0.4 only 0.6 is -> threshold 0.4, FPIR 0.1.
    assert threshold_at_fpir(NONMATED, 0.1) == (0.4, 0.1)
    # FPIR 0.01 of 10 allows none: threshold = the highest non-mated score, FPIR 0.
    assert threshold_at_fpir(NONMATED, 0.01) == (0.6, 0.0)
    # FPIR 0.3 allows three: the 4th highest (0.2) -> 0.6, 0.4, 0.35 above it.
    assert threshold_at_fpir(NONMATED, 0.3) == (0.2, 0.3)
    assert threshold_at_fpir(NONMATED, 1.0) == (-math.inf, 1.0)


def test_ties_never_exceed_the_target():
    # Three non-mated at 0.5: allowing one false positive cannot split them, so none is allowed.
    t, reached = threshold_at_fpir([0.5, 0.5, 0.5, 0.1], 0.25)
    assert t == 0.5 and reached == 0.0


def test_tpir_counts_rank_1_mates_above_the_threshold():
    # At threshold 0.4 the rank-1 mates above it: 0.9 and 0.5 (0.3 is below; 0.8 is rank 2).
    assert tpir_at_fpir(RANKS, MATE, NONMATED, 0.1)["tpir"] == 2 / 5
    assert tpir_at_fpir(RANKS, MATE, NONMATED, 0.01)["tpir"] == 1 / 5
    # Counting a mate at rank 2 as well (FNIR at rank R = 2) adds 0.8.
    assert tpir_at_fpir(RANKS, MATE, NONMATED, 0.1, rank=2)["tpir"] == 3 / 5


def test_report():
    r = identification_report(RANKS, MATE, NONMATED)
    assert (r["mated"], r["nonmated"], r["rank_1"], r["rank_5"]) == (5, 10, 0.6, 0.8)
    assert r["tpir_at_fpir"]["1e-02"]["tpir"] == pytest.approx(0.2)
    assert r["tpir_at_fpir"]["1e-01"]["tpir"] == pytest.approx(0.4)
    assert identification_report(RANKS, MATE, [])["tpir_at_fpir"]["1e-01"] is None
