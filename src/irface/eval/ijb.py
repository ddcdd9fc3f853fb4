"""IJB-B / IJB-C protocol math on image features: exactly what insightface's `ijb_11.py` and
`ijb_1n.py` (and arcface_torch's `eval_ijbc.py`) compute, vectorised (numpy; torch's `index_add_`
for the ordered row sums).

- Image feature (mode `N?D?F?`): the embedding plus its mirror's (F1) or the embedding alone (F0);
  kept unnormalised (N1) or L2-normalised (N0); times the detector's faceness score (D1) or not (D0).
  All in float32, as the reference.
- Template: the images of each media averaged (float32, the media's images summed in file order),
  the media summed (float32, in media-id order), then L2-normalised in float64 (1:1 as
  `sklearn.preprocessing.normalize`; 1:N as `x / sqrt(sum(x**2))`, the two scripts differ).
- Pair score: the dot product of the two templates, `np.sum(a * b, -1)` per pair as the reference.
- ROC: sklearn's `roc_curve` (`drop_intermediate=True`); TAR at each FAR is the TPR of the ROC point
  whose FPR is nearest the FAR (ties: the higher TPR, as the reference's flipped-array `min`); AUC is
  the trapezoid rule on those points. Beside it, the TPR interpolated linearly on the ROC at the FAR.

Every float operation is the reference's, in the reference's order, so scores and figures are the
same bits for the same features (the tests compare against a slow literal re-statement).
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from irface.eval.identification import FPIRS, RANKS, mate_ranks, rank_k, tpir_at_fpir

# Ascending, the order of the reference's table (`irface.eval.protocol.FARS` is the .bin sets', descending).
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
POOL_CHUNK = 1 << 15      # images gathered at once while pooling (bounded memory)
SCORE_CHUNK = 1 << 14     # pairs scored at once when a template has many partners


@dataclass(frozen=True)
class Mode:
    """The reference's three switches; all on is the published setting (N1D1F1)."""

    norm_score: bool = True
    detector_score: bool = True
    flip: bool = True

    @property
    def name(self) -> str:
        return f"N{int(self.norm_score)}D{int(self.detector_score)}F{int(self.flip)}"


def image_features(feats: np.ndarray, faceness: np.ndarray, mode: Mode, mirrored: bool = True) -> np.ndarray:
    """float32 (n, E) image features from stored ones: (n, 2E) = [plain | mirror] when `mirrored`,
    else (n, E) plain."""
    feats = np.asarray(feats, dtype=np.float32)
    half = feats.shape[1] // 2 if mirrored else feats.shape[1]
    if mode.flip:
        if not mirrored:
            raise ValueError("flip needs the mirrored images' features")
        x = feats[:, :half] + feats[:, half:]
    else:
        x = feats[:, :half]
    if not mode.norm_score:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if mode.detector_score:
        x = x * np.asarray(faceness, dtype=np.float32)[:, np.newaxis]
    return x


def _starts(keys: np.ndarray) -> np.ndarray:
    """Indices where a run of equal keys (rows of a sorted (n, k) array, or a sorted vector) begins."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    change = (keys[1:] != keys[:-1])
    if change.ndim > 1:
        change = change.any(axis=1)
    return np.r_[0, np.nonzero(change)[0] + 1].astype(np.int64)


def segment_sums(x: np.ndarray, segments: np.ndarray, n: int) -> np.ndarray:
    """(n, ...) sums of x's rows by segment id (`segments[i]` is row i's), each segment's rows added one
    after another in x's row order and x's dtype.

    That is `np.sum(rows, axis=0)`'s (and `np.mean`'s) order, which `np.add.reduceat` does not keep
    (it sums pairwise) and `np.add.at` keeps 20x slower. torch's CPU `index_add_` along dim 0 of
    contiguous rows adds row i into its segment for i = 0, 1, ... (the tests check the bits against
    the reference's loop). The sums start from -0.0, the one exact additive identity (-0.0 + v is v
    for every v, a zero's sign included).
    """
    src = np.ascontiguousarray(x)
    acc = np.full((n,) + src.shape[1:], -0.0, dtype=src.dtype)
    with warnings.catch_warnings():
        # A read-only array (a memory-mapped cache) is only read here.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        torch.from_numpy(acc).index_add_(0, torch.from_numpy(np.asarray(segments, dtype=np.int64)),
                                         torch.from_numpy(src))
    return acc


def pool_templates(features: Callable[[np.ndarray | slice], np.ndarray], templates: np.ndarray, medias: np.ndarray,
                   chunk: int = POOL_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique template ids, float64 (T, E) unnormalised template features).

    `features(rows)` returns the float32 image features of those images (rows: ascending indices, or
    a slice), so only about `chunk` images are held at a time. Each media's images are summed in file
    order and the media of a template in ascending id order: the reference's summation order.
    Templates are visited in the order the file first lists them, so where the file lists each
    template's images together (the archive does), a block of templates is one stretch of rows.
    """
    templates = np.asarray(templates, dtype=np.int64)
    medias = np.asarray(medias, dtype=np.int64)
    if len(templates) == 0:
        raise ValueError("no images to pool")
    unique_templates, first, t_index = np.unique(templates, return_index=True, return_inverse=True)
    visit = np.argsort(first, kind="stable")          # template (index into unique) visited k-th
    rank = np.empty_like(visit)
    rank[visit] = np.arange(len(visit))
    image_rank = rank[t_index]                        # each image's template, by visit
    order = np.lexsort((medias, image_rank))          # stable: file order within each (template, media)
    keys = np.stack([image_rank[order], medias[order]], 1)
    media_starts = _starts(keys)
    t_starts = _starts(keys[:, 0])
    media_of = np.empty(len(order), dtype=np.int64)   # each image's media slot, slots in `order`'s order
    is_start = np.zeros(len(order), dtype=np.int64)
    is_start[media_starts] = 1
    media_of[order] = np.cumsum(is_start) - 1
    template_of_media = keys[media_starts, 0]
    media_counts = np.diff(np.r_[media_starts, len(order)]).astype(np.float32)
    bounds = np.r_[t_starts, len(order)]
    out: Optional[np.ndarray] = None
    t = 0
    while t < len(t_starts):
        # A block of whole templates of about `chunk` images (at least one template).
        t_end = min(max(t + 1, int(np.searchsorted(bounds, bounds[t] + chunk, side="right")) - 1), len(t_starts))
        rows = np.sort(order[bounds[t]:bounds[t_end]])
        if rows[-1] - rows[0] == len(rows) - 1:
            rows = slice(int(rows[0]), int(rows[-1]) + 1)  # one stretch of the file: no gather
        x = np.asarray(features(rows), dtype=np.float32)
        m_lo, m_hi = np.searchsorted(media_starts, [bounds[t], bounds[t_end]])
        media_means = segment_sums(x, media_of[rows] - m_lo, m_hi - m_lo)
        media_means /= media_counts[m_lo:m_hi, None]
        sums = segment_sums(media_means, template_of_media[m_lo:m_hi] - t, t_end - t)
        if out is None:
            out = np.zeros((len(t_starts), x.shape[1]), dtype=np.float64)
        out[visit[t:t_end]] = sums
        t = t_end
    assert out is not None
    return unique_templates, out


def normalize_1n(template_feats: np.ndarray) -> np.ndarray:
    """The 1:N script's normalisation: x / sqrt(sum(x ** 2, -1)) (no guard for zero rows)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return template_feats / np.sqrt(np.sum(template_feats ** 2, -1, keepdims=True))


def template_rows(unique_templates: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each template id in `unique_templates` (sorted), -1 where it has none."""
    ids = np.asarray(ids, dtype=np.int64)
    pos = np.searchsorted(unique_templates, ids)
    pos_c = np.minimum(pos, max(len(unique_templates) - 1, 0))
    found = (pos < len(unique_templates)) & (unique_templates[pos_c] == ids) if len(unique_templates) else \
        np.zeros(len(ids), bool)
    return np.where(found, pos_c, -1)


def pair_scores(template_norm: np.ndarray, rows1: np.ndarray, rows2: np.ndarray,
                chunk: int = SCORE_CHUNK, threads: Optional[int] = None) -> np.ndarray:
    """float64 score of each pair of template rows: `np.sum(a * b, -1)`, the reference's arithmetic.

    Pairs are visited grouped by their first template, which is broadcast instead of gathered (one
    row read per pair instead of two), in reused buffers, on `threads` threads (default: the CPUs;
    numpy releases the GIL in these loops). The products and the per-row sums are the reference's,
    so are the bits.
    """
    rows1 = np.asarray(rows1, dtype=np.int64)
    rows2 = np.asarray(rows2, dtype=np.int64)
    order = np.lexsort((rows2, rows1))  # by first template, then second (nearby rows, fewer cache misses)
    r1, r2 = rows1[order], rows2[order]
    starts = np.r_[_starts(r1), len(r1)]
    sorted_scores = np.empty(len(rows1), dtype=np.float64)

    def work(g_lo: int, g_hi: int) -> None:
        buf = np.empty((chunk, template_norm.shape[1]), dtype=np.float64)
        for a, b in zip(starts[g_lo:g_hi], starts[g_lo + 1:g_hi + 1]):
            left = template_norm[r1[a]]
            for lo in range(a, b, chunk):
                n = min(b, lo + chunk) - lo
                np.take(template_norm, r2[lo:lo + n], axis=0, out=buf[:n])
                np.multiply(buf[:n], left, out=buf[:n])
                np.sum(buf[:n], axis=-1, out=sorted_scores[lo:lo + n])

    groups = len(starts) - 1
    threads = max(1, min(threads or os.cpu_count() or 1, groups))
    # Split the groups into `threads` runs of about equal pair counts.
    cuts = np.searchsorted(starts, np.linspace(0, len(r1), threads + 1)[1:-1]).tolist()
    bounds = [0] + cuts + [groups]
    if threads == 1:
        work(0, groups)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda ab: work(*ab), zip(bounds[:-1], bounds[1:])))
    scores = np.empty(len(rows1), dtype=np.float64)
    scores[order] = sorted_scores
    return scores


def sklearn_roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) exactly as `sklearn.metrics.roc_curve(labels, scores)` (drop_intermediate).

    Needs both classes (the reference divides by their counts).
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    idx = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[idx]
    fps = 1 + idx - tps
    thresholds = s[idx]
    if len(fps) > 2:
        keep = np.nonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    if fps[-1] <= 0 or tps[-1] <= 0:
        raise ValueError("the pairs need both genuine (1) and impostor (0) labels")
    return fps / fps[-1], tps / tps[-1], thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoid area under (fpr, tpr), the arithmetic of `sklearn.metrics.auc` (np.trapz)."""
    return float(np.add.reduce(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tar_nearest(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = IJB_FARS) -> dict[float, tuple[float, float]]:
    """The reference's rule: the ROC point whose FPR is nearest each FAR -> (TPR, that FPR)."""
    f, t = fpr[::-1], tpr[::-1]  # flipped as the reference does: the first of equal FPRs has the higher TPR
    out = {}
    for far in fars:
        i = int(np.argmin(np.abs(f - far)))  # the first minimum, as min() over (distance, index) tuples
        out[far] = (float(t[i]), float(f[i]))
    return out


def tar_interpolated(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = IJB_FARS) -> dict[float, float]:
    """TPR at exactly each FAR, linear between the two ROC points around it (the highest TPR at an
    FPR reached exactly)."""
    out = {}
    for far in fars:
        i = int(np.searchsorted(fpr, far, side="right")) - 1  # last point with fpr <= far
        if i >= len(fpr) - 1 or fpr[i] == far:
            out[far] = float(tpr[i])
        else:
            w = (far - fpr[i]) / (fpr[i + 1] - fpr[i])
            out[far] = float(tpr[i] + w * (tpr[i + 1] - tpr[i]))
    return out


@dataclass
class Verification:
    scores: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    tar: dict[float, tuple[float, float]]
    tar_interpolated: dict[float, float]
    auc: float


def verification(template_norm: np.ndarray, unique_templates: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                 labels: np.ndarray, fars: Sequence[float] = IJB_FARS) -> Verification:
    """1:1 figures of the pairs (every pair's templates must have a row)."""
    r1, r2 = template_rows(unique_templates, t1), template_rows(unique_templates, t2)
    if (r1 < 0).any() or (r2 < 0).any():
        raise ValueError("a pair names a template without features")
    return verification_rows(template_norm, r1, r2, labels, fars)


def verification_rows(template_norm: np.ndarray, r1: np.ndarray, r2: np.ndarray, labels: np.ndarray,
                      fars: Sequence[float] = IJB_FARS) -> Verification:
    """`verification` of pairs given as rows of `template_norm`."""
    scores = pair_scores(template_norm, r1, r2)
    fpr, tpr, _ = sklearn_roc_curve(labels, scores)
    return Verification(scores, fpr, tpr, tar_nearest(fpr, tpr, fars), tar_interpolated(fpr, tpr, fars),
                        auc(fpr, tpr))


def reference_1n(probe_feats: np.ndarray, probe_subjects: np.ndarray, gallery_feats: np.ndarray,
                 gallery_subjects: np.ndarray, fars: Sequence[float] = FPIRS,
                 chunk: int = 4096) -> dict:
    """`ijb_1n.py`'s own figures, probes against the union of both galleries: top-1/5/10 and its
    "far" rule (the ceil(probes x far)-th highest of all non-mate scores as threshold, TPR = mates
    strictly above it, whatever their rank). Every probe's subject must be in the gallery once."""
    gallery_subjects = np.asarray(gallery_subjects)
    uniq, first, counts = np.unique(gallery_subjects, return_index=True, return_counts=True)
    pos = np.searchsorted(uniq, probe_subjects)
    pos_c = np.minimum(pos, len(uniq) - 1)
    ok = (pos < len(uniq)) & (uniq[pos_c] == probe_subjects) & (counts[pos_c] == 1)
    if not ok.all():
        bad = int(np.asarray(probe_subjects)[~ok][0])
        raise ValueError(f"probe subject {bad} is not in the galleries exactly once (the reference script stops here)")
    mates = first[pos_c]
    q = len(probe_subjects)
    need = max(math.ceil(q * far) for far in fars)
    ranks = np.empty(q, np.int64)
    pos_sims = np.empty(q)
    top_neg = np.empty(0)
    for lo in range(0, q, chunk):
        sim = probe_feats[lo:lo + chunk] @ gallery_feats.T
        m = mates[lo:lo + chunk]
        r, s, _ = mate_ranks(sim, m)
        ranks[lo:lo + chunk], pos_sims[lo:lo + chunk] = r, s
        sim[np.arange(len(m)), m] = -np.inf
        flat = sim.ravel()
        k = min(need, flat.size)
        top_neg = np.r_[top_neg, np.partition(flat, flat.size - k)[flat.size - k:]] if k else top_neg
        if len(top_neg) > need:
            top_neg = np.partition(top_neg, len(top_neg) - need)[len(top_neg) - need:]
    top_neg = np.sort(top_neg)[::-1]
    far_rule = {}
    for far in fars:
        k = math.ceil(q * far)
        far_rule[far] = float(np.sum(pos_sims > top_neg[k - 1]) / q) if 1 <= k <= len(top_neg) else None
    return {"ranks": ranks, "rank": rank_k(ranks, RANKS), "far_rule": far_rule}


def nist_1n(probe_feats: np.ndarray, probe_subjects: np.ndarray, gallery_feats: np.ndarray,
            gallery_subjects: np.ndarray, fpirs: Sequence[float] = FPIRS, chunk: int = 4096) -> dict:
    """One gallery, NIST's open-set figures: probes whose subject is enrolled are mated, the rest
    non-mated; rank-1/5/10 over the mated, TPIR (rank 1) at each FPIR."""
    gallery_subjects = np.asarray(gallery_subjects)
    col = {int(s): i for i, s in enumerate(gallery_subjects)}
    mates = np.array([col.get(int(s), -1) for s in probe_subjects], dtype=np.int64)
    q = len(probe_subjects)
    ranks = np.empty(q, np.int64)
    mate_score = np.empty(q)
    top = np.empty(q)
    for lo in range(0, q, chunk):
        sim = probe_feats[lo:lo + chunk] @ gallery_feats.T
        ranks[lo:lo + chunk], mate_score[lo:lo + chunk], top[lo:lo + chunk] = mate_ranks(sim, mates[lo:lo + chunk])
    mated = mates >= 0
    return {"mated": int(mated.sum()), "non_mated": int((~mated).sum()), "rank": rank_k(ranks, RANKS),
            "tpir_at_fpir": tpir_at_fpir(mate_score[mated], ranks[mated], top[~mated], fpirs)}
