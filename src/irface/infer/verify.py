"""Compare two faces: cosine similarity of their embeddings against a threshold.

The threshold is a cosine similarity. By default it is the one stored with the model (see
`Embedder.threshold`); without one, `DEFAULT_THRESHOLD`, the value ONNX Runtime ArcFace pipelines use
to call two faces the same person. Calibrate your own with `irface eval` on data like yours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from irface.errors import ConfigError
from irface.infer.align import align_face, parse_landmarks
from irface.infer.embed import l2_normalize
from irface.infer.images import open_rgb, read_face
from irface.infer.model_file import Embedder

DEFAULT_THRESHOLD = 0.28


def load_face(path: str | Path, size: int = 112, landmarks: Optional[str | np.ndarray] = None) -> np.ndarray:
    """A face crop from an image file: aligned by its 5 landmarks when given, else resized like `decode_image`."""
    if landmarks is None:
        return read_face(path, size)
    points = parse_landmarks(landmarks, f"{path}: landmarks") if isinstance(landmarks, str) else landmarks
    return align_face(open_rgb(path), points, size)


def similarity(embedder: Embedder, image_a: np.ndarray, image_b: np.ndarray) -> float:
    """Cosine similarity of two uint8 (S, S, 3) RGB face crops."""
    emb = l2_normalize(embedder.embed(np.stack([image_a, image_b])))
    return cosine(emb[0], emb[1])


def cosine(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Cosine similarity of two L2-normalised embeddings, clipped to [-1, 1]."""
    return float(np.clip(emb_a @ emb_b, -1.0, 1.0))


def choose_threshold(embedder: Embedder, threshold: Optional[float] = None) -> tuple[float, str]:
    """(threshold, where it came from: argument, model or default)."""
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold {threshold}: a cosine similarity lies in [-1, 1]")
        return float(threshold), "argument"
    if embedder.threshold is not None:
        return float(embedder.threshold), "model"
    return DEFAULT_THRESHOLD, "default"


def verify_pair(embedder: Embedder, path_a: str | Path, path_b: str | Path, threshold: Optional[float] = None,
                landmarks_a: Optional[str] = None, landmarks_b: Optional[str] = None) -> dict[str, Any]:
    """Compare the faces in two image files; returns similarity, threshold (and its source) and `same`.

    Same person when the similarity is strictly above the threshold, as `irface eval` defines it.
    """
    size = embedder.input_size
    face_a = load_face(path_a, size, landmarks_a)
    face_b = load_face(path_b, size, landmarks_b)
    t, source = choose_threshold(embedder, threshold)
    sim = similarity(embedder, face_a, face_b)
    return {"a": str(path_a), "b": str(path_b), "similarity": sim, "threshold": t, "threshold_source": source,
            "same": bool(sim > t), "model": embedder.info.get("path")}
