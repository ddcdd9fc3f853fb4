"""ROC curves of every target in one PNG (matplotlib is an optional extra: `pip install 'irface[plot]'`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from irface.errors import UserError, import_extra
from irface.eval.result import TargetResult
from irface.utils import atomic_write


def require_matplotlib() -> Any:
    """matplotlib; fails early, in one line, when a plot is asked for and matplotlib is missing."""
    return import_extra("matplotlib", "--plot", "plot", UserError)


def plot_roc(results: Mapping[str, TargetResult], path: str | Path) -> None:
    """TAR against FAR (log scale) for every target, written atomically to `path` as PNG."""
    curves = {}
    for name, r in results.items():
        auc = "n/a" if r.auc is None else f"{r.auc:.4f}"
        curves[f"{name} (AUC {auc}, {r.pairs} pairs)"] = (r.roc_fpr, r.roc_tpr)
    flip = all(r.flip for r in results.values())
    plot_curves(curves, path, "ROC (flip embeddings)" if flip else "ROC")


def plot_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> None:
    """ROC curves {label: (fpr, tpr)}, TAR against FAR on a log axis, written atomically to `path` as PNG."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")  # no display needed; the figure only goes to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        floor, lowest = 1.0, 1.0
        for label, (fpr, tpr) in curves.items():
            keep = fpr > 0  # a log axis cannot show FAR = 0
            if keep.any():
                floor = min(floor, float(fpr[keep].min()))
                lowest = min(lowest, float(tpr[keep].min()))
            ax.plot(fpr[keep], tpr[keep], label=label)
        ax.set_xscale("log")
        ax.set_xlim(max(floor, 1e-6), 1.0)
        # Good models sit near TAR 1: zoom to the curves, in steps of 0.05.
        ax.set_ylim(max(0.0, (int(lowest * 20) - 1) / 20), 1.002)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


__all__ = ["require_matplotlib", "plot_roc", "plot_curves"]
