"""5-point face alignment onto the 112x112 ArcFace template (the crops MS1MV2 was built from).

A detector gives five landmarks (left eye, right eye, nose tip, left and right mouth corners, in the
image's pixel coordinates, x then y, "left" as seen in the image). The similarity transform (rotation,
uniform scale, translation) that maps them onto the template in the least-squares sense is found in
closed form (Umeyama, 1991) and the face is warped bilinearly, outside the image black.

This is the reference's `norm_crop` bit for bit (insightface's alignment code and its IJB scripts:
float32 landmarks and template, `skimage.transform.SimilarityTransform.estimate`, then
`cv2.warpAffine(img, M, (112, 112), borderValue=0.0)` as OpenCV 4.x computes it: positions in
1/32 pixel, 15-bit fixed-point weights; OpenCV 5 changed its warp and differs in a few pixels).
Coordinates follow that convention: pixel (i, j) has its centre at x = i, y = j.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from irface.errors import DataError

TEMPLATE_SIZE = 112


def _reference_template() -> np.ndarray:
    # Built as the reference builds it: the 96x112 template in float32, shifted 8 px right in float32
    # (one coordinate differs by an ulp from writing 70.7299 directly; the warp can see that).
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    return src.astype(np.float64)


# Left eye, right eye, nose tip, left mouth corner, right mouth corner in a 112x112 crop
# (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041).
ARCFACE_TEMPLATE = _reference_template()


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
    The arithmetic is scikit-image's `_umeyama`, step for step, in the inputs' dtype (float32 inputs
    are computed in float32 as the reference's are); M is float64.
    """
    src = np.asarray(src)
    dst = np.asarray(dst)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    var = src_demean.var(axis=0).sum()
    if var < 1e-12:
        raise DataError("landmarks: all five points coincide; cannot align")
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    u, sig, v = np.linalg.svd(a)
    rank = np.count_nonzero(sig > sig.max() * max(a.shape) * np.finfo(float).eps)
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(v) > 0:
        rot = (u @ v).astype(np.float64)  # collinear points: the rotation without a reflection
    else:
        rot = u @ np.diag(d) @ v
    scale = 1.0 / var * (sig @ d)
    m = np.empty((2, 3))
    m[:, 2] = dst_mean - scale * (rot @ src_mean.T)
    m[:, :2] = rot * scale
    return m


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp uint8 (H, W, C) `image` by the 2x3 `matrix` (image -> crop) into a `size` x `size` crop.

    Bilinear, outside the image black, exactly as OpenCV 4.x's `cv2.warpAffine(image, matrix,
    (size, size), borderValue=0)`: the inverse map in double, each position rounded to 1/32 pixel
    in integers, weights in 1/32768, the sum rounded once.
    """
    m = np.asarray(matrix, dtype=np.float64).reshape(-1).copy()
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    m[0], m[4] = m[4] * det, m[0] * det
    m[1] *= -det
    m[3] *= -det
    m[2], m[5] = -m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]
    xs = np.arange(size, dtype=np.float64)
    # 1024 = 2^10 sub-steps, then >> 5: 1/32-pixel positions (OpenCV's AB_BITS and INTER_BITS).
    adelta = np.rint(m[0] * xs * 1024).astype(np.int64)
    bdelta = np.rint(m[3] * xs * 1024).astype(np.int64)
    x0 = np.rint((m[1] * xs + m[2]) * 1024).astype(np.int64) + 16
    y0 = np.rint((m[4] * xs + m[5]) * 1024).astype(np.int64) + 16
    fx_all = (x0[:, None] + adelta[None, :]) >> 5
    fy_all = (y0[:, None] + bdelta[None, :]) >> 5
    sx, sy, fx, fy = fx_all >> 5, fy_all >> 5, fx_all & 31, fy_all & 31
    h, w = image.shape[:2]
    acc = np.zeros((size, size, image.shape[2]), dtype=np.int64)
    for dy, wy in ((0, 32 - fy), (1, fy)):
        for dx, wx in ((0, 32 - fx), (1, fx)):
            yy, xx = sy + dy, sx + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)  # outside the photo: black
            # Only the crop's taps are read (never a converted copy of the whole photo).
            taps = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.int64)
            acc += np.where(inside[..., None], taps, 0) * (wy * wx * 32)[..., None]
    return ((acc + (1 << 14)) >> 15).clip(0, 255).astype(np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray | Sequence[float], size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The aligned `size` x `size` uint8 RGB crop of the face whose 5 landmarks are given (image pixels)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image: expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    points = parse_landmarks(landmarks) if isinstance(landmarks, str) else np.asarray(landmarks, np.float64).reshape(5, 2)
    # float32 landmarks and template, as the reference (its transform is then float32-exact too).
    matrix = similarity_transform(points.astype(np.float32), template(size).astype(np.float32))
    return warp_affine(image, matrix, size)
