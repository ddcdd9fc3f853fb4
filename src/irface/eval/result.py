"""One verification target's figures (`TargetResult`), the seed's printed lines and a summary table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from irface.eval.rates import min_negatives


def far_key(far: float) -> str:
    """1e-3 -> "1e-03": the JSON key of a FAR."""
    return f"{far:.0e}"


@dataclass
class TargetResult:
    """Figures of one `.bin` set.

    `accuracy`/`accuracy_std` use the embeddings of the images as they are, `accuracy_flip`/
    `accuracy_flip_std` the normalised sum of image and mirrored image (None when flip was off); both
    are the seed's 10-fold protocol. The rest are computed on all pairs at once from the embeddings
    named by `scores_from` ("flip" when flip was on, else "plain"): `tar_at_far` maps each FAR to
    the TAR, or None where there are too few different pairs to measure it; `threshold` is the
    protocol distance threshold with the best accuracy on all pairs (middle of a tied run) and
    `threshold_cos` the same as a cosine similarity (faces match when their cosine is > it);
    `cluster_threshold` the cosine of `irface.eval.rates.tail_threshold` on the different pairs.
    """

    name: str
    pairs: int
    positives: int
    negatives: int
    embedding_size: int
    accuracy: float
    accuracy_std: float
    xnorm: float
    accuracy_flip: Optional[float]
    accuracy_flip_std: Optional[float]
    tar_at_far: dict[float, Optional[float]]
    auc: Optional[float]
    eer: Optional[float]
    threshold: float
    threshold_cos: float
    threshold_accuracy: float
    scores_from: str
    fold_accuracies: list[float] = field(default_factory=list)
    fold_accuracies_flip: Optional[list[float]] = None
    seconds: float = 0.0
    roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    cluster_threshold: Optional[float] = None

    @property
    def flip(self) -> bool:
        return self.accuracy_flip is not None

    def to_dict(self, include_roc: bool = False) -> dict[str, Any]:
        """Every figure as plain JSON types; FAR keys as "1e-03"; ROC arrays only when asked."""
        out: dict[str, Any] = {
            "name": self.name, "pairs": self.pairs, "positives": self.positives, "negatives": self.negatives,
            "embedding_size": self.embedding_size,
            "accuracy": self.accuracy, "accuracy_std": self.accuracy_std,
            "accuracy_flip": self.accuracy_flip, "accuracy_flip_std": self.accuracy_flip_std,
            "xnorm": self.xnorm,
            "fold_accuracies": list(self.fold_accuracies),
            "fold_accuracies_flip": None if self.fold_accuracies_flip is None else list(self.fold_accuracies_flip),
            "scores_from": self.scores_from,
            "tar_at_far": {far_key(k): v for k, v in self.tar_at_far.items()},
            "far_unsupported": [far_key(k) for k, v in self.tar_at_far.items() if v is None],
            "auc": self.auc, "eer": self.eer,
            "threshold": self.threshold, "threshold_cos": self.threshold_cos,
            "threshold_accuracy": self.threshold_accuracy, "cluster_threshold": self.cluster_threshold,
            "seconds": self.seconds,
        }
        if include_roc:
            out["roc"] = {"fpr": self.roc_fpr.tolist(), "tpr": self.roc_tpr.tolist()}
        return out


def format_seed_lines(name: str, result: TargetResult) -> list[str]:
    """The seed's lines, byte for byte: `[lfw]XNorm: %f`, `[lfw]Accuracy: %1.5f+-%1.5f`, `[lfw]Accuracy-Flip: ...`."""
    lines = ["[%s]XNorm: %f" % (name, result.xnorm),
             "[%s]Accuracy: %1.5f+-%1.5f" % (name, result.accuracy, result.accuracy_std)]
    if result.accuracy_flip is not None and result.accuracy_flip_std is not None:
        lines.append("[%s]Accuracy-Flip: %1.5f+-%1.5f" % (name, result.accuracy_flip, result.accuracy_flip_std))
    return lines


def seed_lines(results: Mapping[str, TargetResult]) -> list[str]:
    """`format_seed_lines` of every target, in order: what eval prints, and training logs, first."""
    return [line for name, r in results.items() for line in format_seed_lines(name, r)]


TABLE_FARS = (1e-2, 1e-3, 1e-4)


def _fmt(value: Optional[float], spec: str = ".5f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(results: Mapping[str, TargetResult]) -> list[str]:
    """A fixed-width summary of every target (n/a where a FAR needs more different pairs than the set has)."""
    header = ["target", "pairs", "Accuracy", "Accuracy-Flip", "XNorm", "AUC", "EER",
              *[f"TAR@{far_key(f)}" for f in TABLE_FARS], "thr(cos)"]
    rows = []
    for name, r in results.items():
        flip = "-" if r.accuracy_flip is None else f"{r.accuracy_flip:.5f}+-{r.accuracy_flip_std:.5f}"
        rows.append([name, str(r.pairs), f"{r.accuracy:.5f}+-{r.accuracy_std:.5f}", flip, f"{r.xnorm:.4f}",
                     _fmt(r.auc), _fmt(r.eer), *[_fmt(r.tar_at_far.get(f)) for f in TABLE_FARS],
                     f"{r.threshold_cos:.4f}"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    unsupported = sorted({f for r in results.values() for f in TABLE_FARS if r.tar_at_far.get(f, 0) is None}, reverse=True)
    if unsupported:
        needs = ", ".join(f"{far_key(f)} needs >= {min_negatives(f):,} different pairs" for f in unsupported)
        lines.append(f"n/a: too few different pairs to measure that FAR ({needs})")
    return lines


def report(results: Mapping[str, TargetResult], **meta: Any) -> dict[str, Any]:
    """One JSON-ready object: `meta` (model, device, ...) and every target's figures under `targets`."""
    return {**meta, "protocol": "10-fold, squared L2 on L2-normalised embeddings, thresholds 0:4:0.01",
            "targets": {name: r.to_dict() for name, r in results.items()}}
