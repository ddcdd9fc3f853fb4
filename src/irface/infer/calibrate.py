"""Pick a verify threshold for a model on labelled pairs and keep it beside the model.

Pairs come from a verification `.bin` (aligned crops, pairs as the archive lists them) or from a folder
of identity folders (`people/alice/*.jpg`, `people/bob/*.jpg`, ...: photos are detected and aligned as
`irface embed` does, and every two faces make a pair, same person when they share a folder).

The threshold is a cosine similarity ("same person" when the similarity is strictly above it), chosen
for the best accuracy over all pairs, or for a target FAR. Best accuracy: the candidates are the midpoints
between neighbouring distinct scores (and one just outside each end); of equally accurate neighbours the
middle one of the first run is taken (`irface.eval.rates.middle_of_best_run`, the rule `irface eval`'s
threshold follows), a margin on both sides for new faces. Target FAR: `irface.eval.rates.threshold_at_rate`
of the different-person pairs, the rule of `irface eval`'s TAR at FAR. Beside it, always, the clustering
threshold `irface cluster` uses: `irface.eval.rates.tail_threshold` of the different-person pairs. Both are written
with how it was found to `<model>.irface.json` (`irface.models.metadata.calibration_path`), which
`load_model` reads: `irface verify` then uses it.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from irface.errors import ConfigError, DataError
from irface.models.metadata import CLUSTER_THRESHOLD_KEY, THRESHOLD_KEY, calibration_path
from irface.infer.embed import l2_normalize
from irface.infer.model_file import Embedder
from irface.utils import atomic_write

log = logging.getLogger(__name__)


def scores_from_bin(embedder: Embedder, path: str | Path, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity of each pair, issame) of a verification `.bin`."""
    from irface.eval.verification import embed_bin

    emb, _, issame = embed_bin(embedder.embed, str(path), batch_size, flip=False)
    emb = l2_normalize(emb)
    return np.sum(emb[0::2] * emb[1::2], axis=1).astype(np.float64), np.asarray(issame, dtype=bool)


def scores_from_folder(embedder: Embedder, folder: str | Path, batch_size: int = 64, **face_options
                       ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(cosine similarities, issame, skipped inputs) of every two faces under `folder`'s identity folders."""
    from irface.infer.embed import embed_sources
    from irface.infer.images import collect_faces

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a .bin file or a folder of identity folders")
    result = embed_sources(embedder, collect_faces([folder], embedder.input_size), batch_size, progress=False,
                           **face_options)
    identities = []
    for name in result.names:
        rel = Path(name.split("#")[0]).relative_to(folder).parts
        if len(rel) < 2:
            raise DataError(f"{name}: a photo directly in {folder}; put each person's photos in a folder of "
                            "their own (people/alice/1.jpg)")
        identities.append(rel[0])
    ids = np.asarray(identities)
    i, j = np.triu_indices(len(ids), 1)
    sims = (result.embeddings @ result.embeddings.T)[i, j].astype(np.float64)
    return sims, ids[i] == ids[j], result.skipped


def pick_threshold(scores: np.ndarray, issame: np.ndarray, far: Optional[float] = None) -> dict[str, Any]:
    """The threshold (cosine; same when score > threshold) and what it gives on these pairs."""
    from irface.eval.protocol import roc_auc
    from irface.eval.rates import CLUSTER_FAR, middle_of_best_run, min_negatives, tail_threshold, threshold_at_rate

    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    pos, neg = scores[issame], scores[~issame]
    if not len(pos) or not len(neg):
        raise DataError(f"calibration needs same-person and different-person pairs; got {len(pos)} same and "
                        f"{len(neg)} different")
    if far is not None:
        if not 0.0 < far < 1.0:
            raise ConfigError(f"--far {far}: a false accept rate lies in (0, 1)")
        at_rate = threshold_at_rate(neg, far)
        if at_rate is None:
            log.warning("FAR %g needs at least %d different-person pairs to allow one false accept; with %d the "
                        "threshold is their highest similarity", far, min_negatives(far), len(neg))
        # A threshold must be a number in the metadata: the highest different pair where the rate cannot be
        # measured, the lowest where it lets every one through (a FAR a hair below 1).
        threshold = float(neg.max()) if at_rate is None else max(at_rate, float(neg.min()))
        rule = f"far<={far:g}"
    else:
        values = np.unique(scores)
        cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
        # Right at each cut: same pairs above it plus different pairs at or below it.
        correct = (len(pos) - np.searchsorted(np.sort(pos), cuts, side="right")
                   + np.searchsorted(np.sort(neg), cuts, side="right"))
        threshold = float(cuts[middle_of_best_run(correct)])
        rule = "best accuracy"
    accepted = scores > threshold
    return {THRESHOLD_KEY: threshold, "threshold_metric": "cosine", "rule": rule,
            "accuracy": float(np.mean(accepted == issame)), "far": float(np.mean(neg > threshold)),
            "tar": float(np.mean(pos > threshold)), "auc": roc_auc(scores, issame),
            "same_pairs": int(len(pos)), "different_pairs": int(len(neg)),
            "lowest_same": float(pos.min()), "highest_different": float(neg.max()),
            CLUSTER_THRESHOLD_KEY: tail_threshold(neg), "cluster_rule": f"normal tail at far {CLUSTER_FAR:g}"}


def calibrate(embedder: Embedder, model_path: str | Path, pairs: str | Path, far: Optional[float] = None,
              batch_size: int = 64, write: bool = True, **face_options) -> dict[str, Any]:
    """Score `pairs` with `embedder`, pick the threshold and (with `write`) store it beside `model_path`."""
    pairs = Path(pairs)
    if not pairs.exists():
        raise DataError(f"{pairs}: no such file or folder")
    skipped: list[dict] = []
    if pairs.is_file():
        scores, issame = scores_from_bin(embedder, pairs, batch_size)
    else:
        scores, issame, skipped = scores_from_folder(embedder, pairs, batch_size, **face_options)
    report = pick_threshold(scores, issame, far)
    report.update(pairs=str(pairs), model=str(model_path), skipped=skipped,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if embedder.norm.source in ("argument", "calibration"):
        report.update(embedder.norm.to_metadata())  # the model's input settings, kept for later runs
    report.update(getattr(embedder, "forced", {}))  # --layout / --output-name where they changed the graph's answer
    if write:
        target = calibration_path(model_path)
        with atomic_write(target, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
        report["file"] = str(target)
    return report
