"""Parity checks: an exported model must give the PyTorch model's embeddings before it is reported done."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

from irface.errors import UserError, first_line

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
CHECK_BATCHES = (1, 7)


class ParityError(UserError):
    """An exported model disagrees with the PyTorch model (or cannot be run): the export is refused."""


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest per-row ||got - ref|| / ||ref||: one bad embedding is enough to fail."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf")
    num = np.linalg.norm(got - ref, axis=1)
    den = np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    err = float(np.max(num / den))
    return err if np.isfinite(err) else float("inf")


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, E) arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.sum(a * b, axis=1)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def random_input(batch: int, input_size: int, seed: int = 0) -> np.ndarray:
    """Float32 (batch, 3, S, S) in the normalised pixel range [-1, 1], reproducible."""
    rng = np.random.default_rng(seed + batch)
    return rng.uniform(-1.0, 1.0, size=(batch, 3, input_size, input_size)).astype(np.float32)


def reference_embeddings(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(x)).float().numpy()


def check_parity(run: Callable[[np.ndarray], np.ndarray], reference: torch.nn.Module, input_size: int,
                 tolerance: float, batches: Sequence[int] = CHECK_BATCHES, what: str = "export") -> list[dict]:
    """Run `run` (the exported model) and `reference` on the same random inputs; raise ParityError past `tolerance`.

    Returns one record per batch size: `{"batch", "relative_error", "tolerance"}`.
    """
    records = []
    for batch in batches:
        x = random_input(batch, input_size)
        ref = reference_embeddings(reference, x)
        try:
            got = np.asarray(run(x))
        except Exception as e:  # a model that does not run is a failed check, not a crash
            raise ParityError(f"{what}: the exported model failed to run at batch {batch} "
                              f"({first_line(e)})") from None
        err = relative_error(got, ref)
        log.info("%s: batch %d relative error %.3g (tolerance %.0e)", what, batch, err, tolerance)
        records.append({"batch": batch, "relative_error": err, "tolerance": tolerance})
        if not err < tolerance:
            raise ParityError(f"{what}: output differs from PyTorch at batch {batch}: relative error "
                              f"{err:.3g} >= {tolerance:.0e}; output removed")
    return records
