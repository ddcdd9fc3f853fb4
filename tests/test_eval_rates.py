"""The two threshold rules (`irface.eval.rates`): their ties and edges, and that every figure uses them."""

from __future__ import annotations

import numpy as np
import pytest

from irface.eval.identification import tpir_at_fpir
from irface.eval.protocol import tar_at_far
from irface.eval.rates import allowed_false, middle_of_best_run, min_negatives, threshold_at_rate
from irface.infer.calibrate import pick_threshold


def test_threshold_is_the_next_negative_below_those_allowed():
    neg = np.array([0.1, 0.9, 0.5, 0.7, 0.3])  # unsorted on purpose
    assert threshold_at_rate(neg, 0.2) == 0.7  # one of five may pass: only 0.9 scores above 0.7
    assert threshold_at_rate(neg, 0.4) == 0.5
    assert threshold_at_rate(neg, 0.59) == 0.5  # floor(2.95) = 2
    assert threshold_at_rate(neg, 0.8) == 0.1


def test_threshold_edges_unmeasurable_and_everything():
    neg = np.array([0.3, 0.2, 0.1])
    assert threshold_at_rate(neg, 0.33) is None  # 0.99 of a false accept: none allowed, not measurable
    assert threshold_at_rate(neg, 1.0) == -np.inf  # every negative may pass
    assert threshold_at_rate(np.array([]), 0.5) is None
    assert threshold_at_rate(np.array([0.4]), 1.0) == -np.inf


def test_ties_at_the_threshold_are_all_rejected():
    neg = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    t = threshold_at_rate(neg, 0.4)  # two may pass; the 3rd highest is 0.8, tied with the 2nd and 4th
    assert t == 0.8 and np.sum(neg > t) == 1  # fewer than allowed pass, never more


def test_rate_rounding_counts_whole_pairs():
    assert allowed_false(1e-3, 3000) == 3  # 1e-3 * 3000 is 2.9999999999999996 in floating point
    assert allowed_false(0.01, 300) == 3
    assert allowed_false(0.01, 99) == 0
    assert min_negatives(1e-3) == 1000 and min_negatives(0.3) == 4
    for rate in (1e-1, 1e-2, 1e-3, 1e-4, 0.3, 0.07):  # min_negatives is the first count that measures it
        n = min_negatives(rate)
        assert threshold_at_rate(np.arange(n, dtype=float), rate) is not None
        assert threshold_at_rate(np.arange(n - 1, dtype=float), rate) is None


def test_middle_of_the_first_best_run():
    assert middle_of_best_run([1, 3, 3, 3, 2]) == 2
    assert middle_of_best_run([1, 3, 3, 3, 3, 2]) == 2  # even run: the lower middle
    assert middle_of_best_run([3, 3, 3]) == 1
    assert middle_of_best_run([5]) == 0
    assert middle_of_best_run([4, 1, 4, 4, 4]) == 0  # the first run, even if a later one is longer
    assert middle_of_best_run([0, 2, 5, 5]) == 2  # a run at the end


def test_tar_tpir_and_calibration_share_the_threshold_rule():
    rng = np.random.default_rng(3)
    labels = rng.random(2000) < 0.3
    scores = np.round(rng.normal(size=2000) + labels * 2.0, 1)  # rounding makes many ties
    neg, pos = scores[~labels], scores[labels]
    for rate in (0.1, 0.01, 1e-3):
        t = threshold_at_rate(neg, rate)
        assert t is not None
        assert tar_at_far(scores, labels, (rate,))[rate] == np.mean(pos > t)
        # TPIR at rank 1 with every mate at rank 1 is the share of mates above the threshold
        assert tpir_at_fpir(pos, np.ones(len(pos), int), neg, (rate,))[rate] == np.mean(pos > t)
        assert pick_threshold(scores, labels, far=rate)["threshold"] == t


def test_calibration_takes_the_middle_of_a_tied_run():
    # values 0.4 and 0.5 each hold one same and one different pair: the cuts at 0.25, 0.45 and 0.7 all
    # decide 4 of 6 pairs right. The middle one is taken (the first would be 0.25, the last 0.7).
    scores = np.array([0.1, 0.4, 0.5, 0.4, 0.5, 0.9])
    issame = np.array([False, False, False, True, True, True])
    r = pick_threshold(scores, issame)
    assert r["threshold"] == pytest.approx(0.45) and r["accuracy"] == pytest.approx(4 / 6)


def test_calibration_takes_the_first_of_two_best_runs():
    scores = np.array([0.1, 0.3, 0.5, 0.9])  # different, same, different, same: cuts 0.2 and 0.7 tie
    issame = np.array([False, True, False, True])
    assert pick_threshold(scores, issame)["threshold"] == pytest.approx(0.2)


def test_calibration_where_the_far_cannot_be_measured_or_lets_everything_pass():
    scores = np.array([0.2, 0.5, 0.9, 0.8])
    issame = np.array([False, False, True, True])
    assert pick_threshold(scores, issame, far=0.1)["threshold"] == 0.5  # unmeasurable: the highest different
    assert pick_threshold(scores, issame, far=1 - 1e-12)["threshold"] == 0.2  # all pass: the lowest different


def test_the_tail_estimate_is_mean_plus_the_normal_quantile_times_the_spread():
    from irface.eval.rates import CLUSTER_FAR, tail_threshold

    negatives = np.random.default_rng(0).normal(0.05, 0.2, 200_000)
    # At 1e-4 a normal curve lies 3.719 standard deviations above its mean.
    assert tail_threshold(negatives, 1e-4) == pytest.approx(negatives.mean() + 3.7190 * negatives.std(), abs=1e-4)
    assert tail_threshold(negatives) == tail_threshold(negatives, CLUSTER_FAR)
    # Measured where a normal sample is large enough to count it: the estimate agrees.
    assert tail_threshold(negatives, 1e-3) == pytest.approx(threshold_at_rate(negatives, 1e-3), abs=0.01)
    assert tail_threshold(np.array([0.1]), 1e-4) is None and tail_threshold(np.array([0.0, 0.9]), 1e-4) == 1.0


def test_calibration_keeps_the_clustering_threshold_beside_the_verify_one():
    from irface.eval.rates import tail_threshold

    rng = np.random.default_rng(1)
    scores, issame = np.concatenate([rng.normal(0.0, 0.2, 3000), rng.normal(0.7, 0.15, 3000)]), np.arange(6000) >= 3000
    r = pick_threshold(scores, issame)
    assert r["cluster_threshold"] == tail_threshold(scores[~issame]) > r["threshold"]
