"""5-point face alignment onto the 112x112 ArcFace template (the crops MS1MV2 was built from).

A detector gives five landmarks (left eye, right eye, nose tip, left and right mouth corners, in the
image's pixel coordinates, x then y, "left" as seen in the image). The similarity transform (rotation,
uniform scale, translation) that maps them onto the template in the least-squares sense is found in
closed form (Umeyama, 1991) and the face is warped with Pillow.

Coordinates follow the convention detectors and OpenCV use: pixel (i, j) has its centre at x = i,
y = j. Pillow puts centres at i + 0.5, so the warp shifts by half a pixel on both sides.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from irface.errors import DataError

TEMPLATE_SIZE = 112
# Left eye, right eye, nose tip, left mouth corner, right mouth corner in a 112x112 crop.
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)


def template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The template scaled to a `size` x `size` crop."""
    return ARCFACE_TEMPLATE * (size / TEMPLATE_SIZE)


def parse_landmarks(text: str | Sequence[float], source: str = "--landmarks") -> np.ndarray:
    """`x1,y1,...,x5,y5` (or 10 numbers, or 5 pairs) -> float64 (5, 2); DataError otherwise."""
    if isinstance(text, str):
        parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DataError(f"{source}: expected 10 numbers x1,y1,...,x5,y5, got {text!r}") from None
    else:
        values = np.asarray(text, dtype=np.float64).reshape(-1).tolist()
    if len(values) != 10 or not np.all(np.isfinite(values)):
        raise DataError(f"{source}: expected 10 finite numbers x1,y1,...,x5,y5 (eyes, nose, mouth corners), "
                        f"got {len(values)}")
    return np.asarray(values, dtype=np.float64).reshape(5, 2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M of the rotation + uniform scale + translation best mapping `src` onto `dst`.

    Least squares over all points (Umeyama): dst ~ M[:, :2] @ src + M[:, 2]. Reflections are excluded.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise DataError("landmarks: all five points coincide; cannot align")
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(sign) @ vt
    scale = float((sig * sign).sum() / var_s)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp uint8 (H, W, 3) `image` by the 2x3 `matrix` (image -> crop) into a `size` x `size` crop.

    Bilinear; outside the image is black (as OpenCV's default border).
    """
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    # Pillow maps crop point (x + 0.5, y + 0.5) through the coefficients to image point (u + 0.5, v + 0.5).
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    coeffs = (shift @ inv @ unshift)[:2].reshape(-1)
    # Channel by channel in float ("F" mode) and rounded once: Pillow's 8-bit bilinear truncates,
    # which would darken every crop by half a level on average.
    channels = []
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), mode="F")
        warped = plane.transform((size, size), Image.Transform.AFFINE, tuple(coeffs),
                                 resample=Image.Resampling.BILINEAR, fillcolor=0.0)
        channels.append(np.asarray(warped, dtype=np.float32))
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray | Sequence[float], size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The aligned `size` x `size` uint8 RGB crop of the face whose 5 landmarks are given (image pixels)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image: expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    points = parse_landmarks(landmarks) if isinstance(landmarks, str) else np.asarray(landmarks, np.float64).reshape(5, 2)
    matrix = similarity_transform(points, template(size))
    return warp_affine(image, matrix, size)
