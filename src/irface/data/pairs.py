"""Balanced verification pairs in identity-disjoint folds (the layout of LFW's 10-fold protocol)."""

from __future__ import annotations

import numpy as np

from irface.errors import DataError


def plan_pairs(rng: np.random.Generator, image_counts: np.ndarray | list[int], pairs: int, folds: int = 10,
               source: str = "identities") -> np.ndarray:
    """Choose `pairs` pairs: rows (identity a, image of a, identity b, image of b, same).

    The rows alternate positive and negative pairs and come in `folds` consecutive folds (so every
    fold of even size is balanced, and the whole set too). With at least 2 x `folds` identities the folds
    use disjoint identities, as in LFW, so a threshold chosen on nine folds meets new people in the
    tenth. Within a pair the two images differ; pairs do not repeat while distinct ones remain.
    `image_counts[i]` is how many images identity i has.
    """
    counts = np.asarray(image_counts, dtype=np.int64)
    if pairs < 1:
        raise DataError(f"{source}: --pairs must be at least 1")
    if len(counts) < 2:
        raise DataError(f"{source}: pairs need at least 2 identities, found {len(counts)}")
    if not (counts >= 2).any():
        raise DataError(f"{source}: positive pairs need an identity with at least 2 images")
    folds = max(1, min(folds, pairs))
    ids = np.arange(len(counts))
    groups = [ids] * folds
    if len(ids) >= 2 * folds:
        split = np.array_split(rng.permutation(ids), folds)
        # Only keep identity-disjoint folds if every fold can make a positive pair.
        if all((counts[g] >= 2).any() for g in split):
            groups = split
    sizes = [len(a) for a in np.array_split(np.arange(pairs), folds)]
    rows: list[tuple[int, int, int, int, int]] = []
    seen: set[tuple[int, int, int, int]] = set()
    for group, n in zip(groups, sizes):
        pos_ids = group[counts[group] >= 2]
        for _ in range(n):
            positive = len(rows) % 2 == 0  # alternate over the whole list: balanced overall and per fold
            for _ in range(50):  # a few tries for a pair not chosen yet; then a repeat is accepted
                if positive:
                    a = b = int(rng.choice(pos_ids))
                    ia, ib = (int(x) for x in rng.choice(counts[a], 2, replace=False))
                else:
                    a, b = (int(x) for x in rng.choice(group, 2, replace=False))
                    ia, ib = int(rng.integers(counts[a])), int(rng.integers(counts[b]))
                key = (a, ia, b, ib) if (a, ia) <= (b, ib) else (b, ib, a, ia)
                if key not in seen:
                    break
            seen.add(key)
            rows.append((a, ia, b, ib, int(a == b)))
    return np.asarray(rows, dtype=np.int64)
