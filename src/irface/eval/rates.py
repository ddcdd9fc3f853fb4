"""The three rules every threshold of irface is chosen by, written once (pure numpy).

- **Threshold at a rate** (TAR at FAR, TPIR at FPIR, `irface calibrate --far`): scores above it are
  accepted, and of n negatives (different-person pairs, non-mated probes' top scores) at most
  floor(rate x n) may be, so it is the (floor(rate x n) + 1)-th highest negative. Negatives tied with it
  are all rejected (fewer may pass, never more). rate x n < 1 cannot be measured (None); a rate that
  lets every negative pass gives -inf.
- **The middle of the best run** (the best-accuracy threshold of `irface eval` and `irface calibrate`):
  of equally good neighbouring thresholds, the middle of the first run: a margin on both sides.
- **The tail estimate** (the clustering threshold of `irface calibrate` and of training's validation,
  which `irface cluster` uses): mean + z x standard deviation of the negatives, z the normal quantile of
  `CLUSTER_FAR`. A clustering of N faces links every one of its N^2/2 pairs above its threshold, so it
  needs a false accept rate far below what a few thousand pairs can count (lfw.bin has 3,000 different
  pairs: 1e-3 at best); a normal curve fitted to all of them estimates the far tail.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional

import numpy as np


# The false accept rate of the clustering threshold, chosen on 2,000 photos of 604 people irface's demo model
# never saw (benchmarks/README.md, "On the demo's identities"): estimated from the demo's lfw.bin at this
# rate the threshold (0.753) gave BCubed F1 0.817, the best of a sweep 0.821; the verify thresholds merged
# everyone. A larger collection meets more strangers per face: raise --threshold there.
CLUSTER_FAR = 1e-4


def allowed_false(rate: float, n: int) -> int:
    """How many of `n` negatives a false-accept (or false-positive identification) rate lets through."""
    return math.floor(rate * n + 1e-9)  # 1e-9: 1e-3 * 3000 must give 3, not 2.9999...


def min_negatives(rate: float) -> int:
    """Negatives needed before `rate` allows one false accept (before `threshold_at_rate` is not None)."""
    return math.ceil(1.0 / rate - 1e-9)


def threshold_at_rate(negatives: np.ndarray, rate: float) -> Optional[float]:
    """The threshold ("accept when score > threshold") at `rate` of `negatives` (see the module docstring)."""
    negatives = np.asarray(negatives, dtype=np.float64).ravel()
    allowed = allowed_false(rate, len(negatives))
    if allowed < 1:
        return None
    if allowed >= len(negatives):
        return float("-inf")
    return float(np.partition(negatives, len(negatives) - 1 - allowed)[len(negatives) - 1 - allowed])


def middle_of_best_run(values: np.ndarray) -> int:
    """Index of the middle of the first run of maximal `values` (the lower middle of an even run)."""
    values = np.asarray(values)
    first = last = int(np.argmax(values))
    while last + 1 < len(values) and values[last + 1] == values[first]:
        last += 1
    return (first + last) // 2


def tail_threshold(negatives: np.ndarray, rate: float = CLUSTER_FAR) -> Optional[float]:
    """The score a normal curve fitted to `negatives` exceeds with probability `rate` (None below two
    negatives), at most 1."""
    negatives = np.asarray(negatives, dtype=np.float64).ravel()
    if len(negatives) < 2:
        return None
    return min(1.0, float(negatives.mean() + NormalDist().inv_cdf(1.0 - rate) * negatives.std()))
