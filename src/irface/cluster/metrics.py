"""How well a clustering matches true labels: pairwise and BCubed precision / recall / F1, and more.

Definitions (docs/cluster.md gives them with their sources):
- pairwise (Otto, Wang & Jain, "Clustering millions of faces by identity", IEEE TPAMI 40(2), 2018):
  precision = pairs of faces put together that are the same person / pairs put together; recall = the
  same / pairs of the same person.
- BCubed (Bagga & Baldwin, 1998; Amigo, Gonzalo, Artiles & Verdejo, "A comparison of extrinsic clustering
  evaluation metrics based on formal constraints", Information Retrieval 12(4), 2009): per face, precision =
  share of its cluster that is its person, recall = share of its person that is in its cluster; each
  averaged over the faces.

A noise face (-1) is put together with no other face: it counts as a cluster of its own in BCubed and
makes no pair. Precision of a clustering that puts no pair together is 1 (it claims nothing wrong).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _codes(values: Sequence[Any]) -> np.ndarray:
    return np.unique(np.asarray(values), return_inverse=True)[1].ravel()


def _with_noise_apart(predicted: np.ndarray) -> np.ndarray:
    """Each noise face (-1) made a cluster of its own, numbered after the real ones."""
    out = np.asarray(predicted, np.int64).copy()
    noise = out < 0
    out[noise] = out.max(initial=-1) + 1 + np.arange(noise.sum())
    return out


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def clustering_scores(predicted: Sequence[int] | np.ndarray, truth: Sequence[Any]) -> dict[str, Any]:
    """Pairwise and BCubed precision / recall / F1, people found vs true, and the noise fraction."""
    predicted = np.asarray(predicted, np.int64)
    true = _codes(truth)
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predicted labels for {len(true)} true ones")
    n = len(true)
    if n == 0:
        raise ValueError("no faces to score")
    pred = _with_noise_apart(predicted)
    # The contingency table, sparse: one row per (cluster, person) that share faces.
    pairs, together = np.unique(np.stack([pred, true], 1), axis=0, return_counts=True)
    cluster_size = np.bincount(pred)[pairs[:, 0]]
    person_size = np.bincount(true)[pairs[:, 1]]
    together = together.astype(np.float64)
    b_precision = float((together * together / cluster_size).sum() / n)
    b_recall = float((together * together / person_size).sum() / n)
    same_pairs = _pairs(together)
    put_together = _pairs(np.bincount(pred))
    true_pairs = _pairs(np.bincount(true))
    p_precision = same_pairs / put_together if put_together else 1.0
    p_recall = same_pairs / true_pairs if true_pairs else 1.0
    return {"faces": int(n),
            "pairwise": {"precision": p_precision, "recall": p_recall, "f1": _f1(p_precision, p_recall)},
            "bcubed": {"precision": b_precision, "recall": b_recall, "f1": _f1(b_precision, b_recall)},
            "people_found": int(len(np.unique(predicted[predicted >= 0]))),
            "people_true": int(true.max() + 1),
            "noise_fraction": float(np.mean(predicted < 0))}
