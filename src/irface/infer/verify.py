"""Compare two faces: cosine similarity of their embeddings against a threshold.

Each image is a photo (its largest face is detected and aligned) or an aligned crop, as
`irface.infer.photo` decides, or a photo aligned from 5 landmarks given by the caller.
The threshold is a cosine similarity. By default it is the one `irface calibrate` stored beside the
model, else the one stored in the model (see `Embedder.threshold`); without either,
`irface.infer.settings.DEFAULT_THRESHOLD`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from irface.errors import ConfigError
from irface.data.align import align_face, parse_landmarks
from irface.infer.embed import l2_normalize
from irface.infer.images import open_rgb
from irface.infer.model_file import Embedder
from irface.infer.photo import PhotoFace, largest_face
from irface.infer.settings import DEFAULT_THRESHOLD


def load_face(path: str | Path, size: int | tuple[int, int] = 112, landmarks: Optional[str | np.ndarray] = None, *,
              mode: str = "auto", detector=None) -> PhotoFace:
    """The face of an image file: aligned by its 5 landmarks when given, else as `largest_face` finds it."""
    if landmarks is None:
        return largest_face(path, mode=mode, detector=detector, size=size)
    points = parse_landmarks(landmarks, f"{path}: landmarks") if isinstance(landmarks, str) else landmarks
    return PhotoFace(str(path), align_face(open_rgb(path), points, size), landmarks=np.asarray(points, np.float64))


def similarity(embedder: Embedder, image_a: np.ndarray, image_b: np.ndarray) -> float:
    """Cosine similarity of two uint8 (S, S, 3) RGB face crops."""
    emb = l2_normalize(embedder.embed(np.stack([image_a, image_b])))
    return float(np.clip(emb[0] @ emb[1], -1.0, 1.0))


def choose_threshold(embedder: Embedder, threshold: Optional[float] = None) -> tuple[float, str]:
    """(threshold, where it came from: argument, calibration (irface calibrate), model or default)."""
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold {threshold}: a cosine similarity lies in [-1, 1]")
        return float(threshold), "argument"
    if embedder.threshold is not None:
        return float(embedder.threshold), embedder.threshold_source or "model"
    return DEFAULT_THRESHOLD, "default"


def compare_faces(embedder: Embedder, face_a: PhotoFace, face_b: PhotoFace,
                  threshold: Optional[float] = None) -> dict[str, Any]:
    """The decision on two faces already found: similarity, threshold (its source, and whether it was
    calibrated), `same`, and where each face was found. Same person when the similarity is strictly
    above the threshold, as `irface eval` defines it."""
    t, source = choose_threshold(embedder, threshold)
    sim = similarity(embedder, face_a.crop, face_b.crop)
    return {"a": face_a.name, "b": face_b.name, "similarity": sim, "threshold": t, "threshold_source": source,
            "calibrated": source != "default", "same": bool(sim > t), "model": embedder.info.get("path"),
            "faces": [face_a.to_dict(), face_b.to_dict()]}


def verify_pair(embedder: Embedder, path_a: str | Path, path_b: str | Path, threshold: Optional[float] = None,
                landmarks_a: Optional[str] = None, landmarks_b: Optional[str] = None, *, mode: str = "auto",
                detector=None) -> dict[str, Any]:
    """Compare the faces in two image files (`compare_faces` on what `load_face` finds in each)."""
    size = embedder.input_size
    face_a = load_face(path_a, size, landmarks_a, mode=mode, detector=detector)
    face_b = load_face(path_b, size, landmarks_b, mode=mode, detector=detector)
    return compare_faces(embedder, face_a, face_b, threshold)
