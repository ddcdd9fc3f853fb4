"""Verification accuracy of an exported model next to its PyTorch source, on `.bin` sets.

Each model embeds each set once (`irface.eval.embed_bin`); the protocol's figures come from
`irface.eval.evaluate_embeddings`, lined up with their differences (used by `irface export --eval-bin`).

The protocol's Accuracy-Flip re-picks a threshold in each of 10 folds, so a tiny change to the
embeddings can move it by several pairs at once: on the 600-pair demo sets, adding random noise of
int8's size (cosine 0.9995 to the original) to fp32 embeddings moved it by up to a point either way. The
`decisions` entry is the paired measure that resolves small costs: both models judged at the
reference's own threshold, pair by pair, and how many decisions changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

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


def decision_changes(reference_dist: np.ndarray, exported_dist: np.ndarray, issame: np.ndarray,
                     threshold: float) -> dict[str, Any]:
    """Both models' same/different decisions at one threshold (squared L2 distance), pair by pair."""
    issame = np.asarray(issame, dtype=bool)
    ref_same, got_same = reference_dist < threshold, exported_dist < threshold
    ref_ok, got_ok = ref_same == issame, got_same == issame
    changed = ref_same != got_same
    return {"threshold": float(threshold), "pairs": int(len(issame)), "changed": int(changed.sum()),
            "now_right": int((changed & got_ok).sum()), "now_wrong": int((changed & ref_ok).sum()),
            "reference_accuracy": float(ref_ok.mean()), "exported_accuracy": float(got_ok.mean()),
            "delta": float(got_ok.mean() - ref_ok.mean())}


def _embedded(model: Embedder, path: str | Path, batch_size: int, cache: Optional[dict] = None):
    """(embeddings, mirrored embeddings, issame) of one `.bin`, from `cache` when it holds them."""
    from irface.eval.protocol import N_FOLDS
    from irface.eval.verification import embed_bin

    key = str(path)
    if cache is not None and key in cache:
        return cache[key]
    out = embed_bin(model.embed, key, batch_size, flip=True, min_pairs=N_FOLDS)
    if cache is not None:
        cache[key] = out
    return out


def compare_accuracy(reference: Embedder, candidate: Embedder, bins: Sequence[str | Path],
                     batch_size: int = 64, reference_cache: Optional[dict] = None) -> list[dict[str, Any]]:
    """For each `.bin`: the protocol's figures for `reference` and `candidate`, candidate - reference,
    and `decisions`: both judged at the reference's best threshold over all pairs.

    `reference_cache`: a dict kept across calls with the same reference, so its embeddings of each set
    are computed once (comparing several candidates with one fp32 model).
    """
    from irface.eval.protocol import flip_pair_distances
    from irface.eval.verification import evaluate_embeddings

    report = []
    for path in bins:
        name = Path(path).stem
        results, dists = [], []
        for model, cache in ((reference, reference_cache), (candidate, None)):
            emb, emb_flip, issame = _embedded(model, path, batch_size, cache)
            results.append(evaluate_embeddings(name, emb, issame, emb_flip))
            dists.append(flip_pair_distances(emb, emb_flip))
        ref, got = (_jsonable(r) for r in results)
        entry = {"bin": str(path), "reference": ref, "exported": got, "delta": _delta(ref, got),
                 "decisions": decision_changes(dists[0], dists[1], issame, results[0].threshold)}
        log.info("%s: Accuracy-Flip %.5f -> %.5f; %d of %d decisions changed at the reference's threshold",
                 path, ref["accuracy_flip"], got["accuracy_flip"], entry["decisions"]["changed"], len(issame))
        report.append(entry)
    return report
