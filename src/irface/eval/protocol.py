"""The community's verification protocol (LFW / CFP-FP / AgeDB-30 `.bin` sets), pure numpy on embeddings.

Exactly what the seed's eval.py (and insightface's verification code it was ported from) computes:

- pairs are rows (2i, 2i+1) of the embedding matrix;
- embeddings are held in float64 (the reference copies network outputs into `np.zeros` arrays) and
  L2-normalised as `sklearn.preprocessing.normalize` does (norms below 10 * eps left at 1);
- distance = squared Euclidean, `np.sum(np.square(e1 - e2), 1)`;
- thresholds `np.arange(0, 4, 0.01)`; "same" when distance < threshold (strictly);
- 10 contiguous folds sized as sklearn's `KFold(n_splits=10, shuffle=False)` sizes them (the first
  `n % 10` folds hold one pair more); for each fold the threshold with the best accuracy on the other
  nine folds (the first one on ties, as `np.argmax`) is applied to the fold;
- accuracy = mean of the fold accuracies, "+-" = `np.std` of them (population).

The reference evaluates every threshold with boolean masks; here the same counts come from sorted
distances (`searchsorted` with side="left" counts exactly the distances < t), so the figures are
identical, bit for bit, for the same embeddings.

Beyond the reference (figures of our own, on all pairs at once, no folds): ROC, AUC, EER, TAR at
FAR and the best threshold as a cosine similarity (cos = 1 - d / 2 for unit vectors).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from irface.eval.rates import middle_of_best_run, threshold_at_rate

N_FOLDS = 10
FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def protocol_thresholds() -> np.ndarray:
    """The reference's distance thresholds: 0, 0.01, ..., 3.99 (400 values, float64)."""
    return np.arange(0, 4, 0.01)


def kfold_sizes(n: int, n_splits: int = N_FOLDS) -> list[int]:
    """Fold sizes of sklearn's unshuffled KFold: n // k each, plus one for the first n % k folds."""
    if n_splits < 2:
        raise ValueError(f"need at least 2 folds, got {n_splits}")
    if n < n_splits:
        raise ValueError(f"cannot split {n} pairs into {n_splits} folds")
    return [n // n_splits + (1 if i < n % n_splits else 0) for i in range(n_splits)]


def kfold_slices(n: int, n_splits: int = N_FOLDS) -> list[slice]:
    """The contiguous test slices of sklearn's KFold(n_splits, shuffle=False) over range(n)."""
    slices, start = [], 0
    for size in kfold_sizes(n, n_splits):
        slices.append(slice(start, start + size))
        start += size
    return slices


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64, as `sklearn.preprocessing.normalize` (a copy).

    Rows whose norm is below 10 * machine epsilon are left unscaled (all-zero rows stay zero).
    """
    x = np.array(embeddings, dtype=np.float64, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    x /= norms[:, np.newaxis]
    return x


def pair_distances(normalized: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between rows 2i and 2i+1 (of already normalised embeddings)."""
    if normalized.ndim != 2 or normalized.shape[0] % 2:
        raise ValueError(f"expected an even number of embedding rows, got shape {normalized.shape}")
    diff = np.subtract(normalized[0::2], normalized[1::2])
    return np.sum(np.square(diff), 1)


def flip_pair_distances(embeddings: np.ndarray, embeddings_flip: np.ndarray) -> np.ndarray:
    """The pair distances behind Accuracy-Flip: each image's raw vector plus its mirror's, then normalised
    (the sum of raw vectors, as the reference)."""
    return pair_distances(l2_normalize(np.asarray(embeddings, dtype=np.float64)
                                       + np.asarray(embeddings_flip, dtype=np.float64)))


def _less_counts(dist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many distances are < t (NaN distances count as never below)."""
    return np.searchsorted(np.sort(dist), thresholds, side="left")


def _correct_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Pairs classified correctly at each threshold: same pairs with d < t plus different pairs with d >= t."""
    same = issame.astype(bool)
    pos_below = _less_counts(dist[same], thresholds)
    neg = dist[~same]
    neg_not_below = len(neg) - _less_counts(neg, thresholds)
    return pos_below + neg_not_below


def fold_accuracies(dist: np.ndarray, issame: np.ndarray, n_folds: int = N_FOLDS,
                    thresholds: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold test accuracies and the threshold each fold used (the reference's `calculate_roc`)."""
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if dist.shape != issame.shape:
        raise ValueError(f"{dist.shape[0]} distances for {issame.shape[0]} pair labels")
    thresholds = protocol_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    folds = kfold_slices(len(dist), n_folds)
    correct = np.stack([_correct_counts(dist[s], issame[s], thresholds) for s in folds])  # (folds, T)
    total = correct.sum(axis=0)
    accuracies = np.zeros(n_folds)
    best = np.zeros(n_folds)
    for k, s in enumerate(folds):
        # Training accuracy is correct / n_train for every threshold; with one n_train per fold the
        # argmax of the counts is the argmax of the accuracies, first index on ties.
        idx = int(np.argmax(total - correct[k]))
        best[k] = thresholds[idx]
        accuracies[k] = float(correct[k, idx]) / (s.stop - s.start)
    return accuracies, best


def verification_accuracy(embeddings: np.ndarray, issame: np.ndarray,
                          n_folds: int = N_FOLDS) -> tuple[float, float, np.ndarray]:
    """Raw embeddings (2N, E) and N labels -> (mean accuracy, std over folds, fold accuracies)."""
    dist = pair_distances(l2_normalize(embeddings))
    acc, _ = fold_accuracies(dist, issame, n_folds)
    return float(np.mean(acc)), float(np.std(acc)), acc


def mean_norm(*embedding_sets: np.ndarray) -> float:
    """XNorm: the mean L2 norm of every raw embedding row across the given sets (original and flipped)."""
    norms = np.concatenate([np.linalg.norm(np.asarray(e, dtype=np.float64), axis=1) for e in embedding_sets])
    return float(np.mean(norms)) if len(norms) else float("nan")


def best_threshold(dist: np.ndarray, issame: np.ndarray,
                   thresholds: Optional[np.ndarray] = None) -> tuple[float, float]:
    """The protocol threshold with the best accuracy over all pairs, and that accuracy.

    Several neighbouring thresholds often tie (no pair lies between them): `middle_of_best_run` picks one.
    """
    thresholds = protocol_thresholds() if thresholds is None else thresholds
    correct = _correct_counts(np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool), thresholds)
    idx = middle_of_best_run(correct)
    return float(thresholds[idx]), float(correct[idx]) / len(dist)


def cosine_from_distance(dist: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between unit vectors -> cosine similarity (d = 2 - 2 cos)."""
    return 1.0 - np.asarray(dist, dtype=np.float64) / 2.0


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for "accept when score >= threshold", one point per distinct score.

    Starts at (0, 0) with threshold +inf. Rates are NaN when a class is absent.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(issame, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], dtype=int)
    tps = np.cumsum(y)[last] if len(s) else np.array([])
    fps = (last + 1) - tps
    pos, neg = int(labels.sum()), int((~labels).sum())
    tpr = np.r_[0.0, tps / pos] if pos else np.full(len(last) + 1, np.nan)
    fpr = np.r_[0.0, fps / neg] if neg else np.full(len(last) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores: np.ndarray, issame: np.ndarray) -> Optional[float]:
    """Area under the ROC curve: P(score of a same pair > score of a different pair), ties count 1/2."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(issame, dtype=bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank (1-based) of each distinct value, then the Mann-Whitney U statistic.
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse][labels].sum())
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def equal_error_rate(scores: np.ndarray, issame: np.ndarray) -> Optional[float]:
    """The rate where false accepts equal false rejects, linearly interpolated on the ROC curve."""
    fpr, tpr, _ = roc_curve(scores, issame)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return None
    fnr = 1.0 - tpr
    gap = fnr - fpr  # starts at 1, ends at -1 (or 0), non-increasing
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0])
    a, b = gap[i - 1], gap[i]
    t = a / (a - b) if a != b else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tar_at_far(scores: np.ndarray, issame: np.ndarray,
               fars: Sequence[float] = FARS) -> dict[float, Optional[float]]:
    """True accept rate at each false accept rate; None where the pairs cannot measure that FAR.

    The threshold is `threshold_at_rate` of the different pairs' scores (a FAR is measurable when it
    allows at least one false accept); same pairs scoring strictly above it are accepted.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(issame, dtype=bool)
    neg, pos = scores[~labels], scores[labels]
    out: dict[float, Optional[float]] = {}
    for far in fars:
        threshold = threshold_at_rate(neg, far)
        out[far] = None if threshold is None or not len(pos) else float(np.mean(pos > threshold))
    return out
