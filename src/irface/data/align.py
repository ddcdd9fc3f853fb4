"""5-point face alignment onto a model's crop: the 112x112 ArcFace template (the crops MS1MV2 was built
from) and the other families' conventions for other input sizes (`template`).

A detector gives five landmarks (left eye, right eye, nose tip, left and right mouth corners, in the
image's pixel coordinates, x then y, "left" as seen in the image). The similarity transform (rotation,
uniform scale, translation) that maps them onto the template in the least-squares sense is found in
closed form (Umeyama, 1991) and the face is warped bilinearly, outside the image black.

This is the reference's `norm_crop` bit for bit (insightface's alignment code and its IJB scripts:
float32 landmarks and template, `skimage.transform.SimilarityTransform.estimate`, then
`cv2.warpAffine(img, M, (112, 112), borderValue=0.0)` as OpenCV 4.x computes it: positions in
1/32 pixel, 15-bit fixed-point weights; OpenCV 5 changed its warp and differs in a few pixels).
Coordinates follow that convention: pixel (i, j) has its centre at x = i, y = j.

Crops of other sizes, (height, width), each as its family's reference code makes them:
- square, a multiple of 112: the ArcFace template scaled (insightface's `estimate_norm`);
- square, a multiple of 128: the ArcFace template scaled by size / 128 and moved 8 * size / 128 px
  right (insightface's `estimate_norm`; the face keeps its 112 scale, the crop gains a margin);
- 112 high and 96 wide (or a multiple: SphereFace, CosFace, AM-Softmax): their 96x112 template (ArcFace's
  8 px to the left) with MATLAB's `cp2tform(..., 'similarity')`, as their Python ports compute it
  (`matlab_cp2tform.get_similarity_transform_for_cv2`: the least-squares fit from the template to the
  landmarks, inverted), then `cv2.warpAffine(img, M, (96, 112))`;
- any other (FaceNet's 160x160 among them: its own pipeline crops a detector box with a margin and
  has no 5-point template): the ArcFace template scaled to the shorter side and centred.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from irface.data.images import crop_shape
from irface.errors import DataError

TEMPLATE_SIZE = 112


# The SphereFace / CosFace 96x112 template (x, y in a crop 96 wide, 112 high), float32 as their code has it.
SPHEREFACE_TEMPLATE = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                                [62.7299, 92.2041]], dtype=np.float32).astype(np.float64)


def _reference_template() -> np.ndarray:
    # Built as the reference builds it: the 96x112 template in float32, shifted 8 px right in float32
    # (one coordinate differs by an ulp from writing 70.7299 directly; the warp can see that).
    src = SPHEREFACE_TEMPLATE.astype(np.float32)
    src[:, 0] += 8.0
    return src.astype(np.float64)


# Left eye, right eye, nose tip, left mouth corner, right mouth corner in a 112x112 crop
# (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041).
ARCFACE_TEMPLATE = _reference_template()

SPHEREFACE_SIZE = (112, 96)  # (height, width)


def crop_family(size: int | tuple[int, int] = TEMPLATE_SIZE) -> str:
    """Whose convention places the five points in a crop of `size` (one side or (height, width)):
    "arcface" (multiples of 112), "insightface-128" (multiples of 128), "sphereface" (96 wide for 112
    high) or "scaled" (the ArcFace template scaled to the shorter side and centred)."""
    h, w = crop_shape(size)
    if h == w and h % TEMPLATE_SIZE == 0:
        return "arcface"
    if h == w and h % 128 == 0:
        return "insightface-128"
    if h * SPHEREFACE_SIZE[1] == w * SPHEREFACE_SIZE[0]:
        return "sphereface"
    return "scaled"


def template(size: int | tuple[int, int] = TEMPLATE_SIZE) -> np.ndarray:
    """The five points' places (float64 (5, 2), x then y) in a crop of `size`: one side or (height, width)."""
    h, w = crop_shape(size)
    family = crop_family((h, w))
    if family == "arcface":
        return ARCFACE_TEMPLATE * (h / TEMPLATE_SIZE)
    if family == "insightface-128":
        # estimate_norm: its arcface_dst (the 112 template written out, float32) * ratio, then
        # x += 8 * ratio, all in float32.
        ratio = h / 128.0
        points = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                           [70.7299, 92.2041]], dtype=np.float32) * ratio
        points[:, 0] += np.float32(8.0 * ratio)
        return points.astype(np.float64)
    if family == "sphereface":
        return SPHEREFACE_TEMPLATE * (h / SPHEREFACE_SIZE[0])
    ratio = min(h, w) / TEMPLATE_SIZE
    return ARCFACE_TEMPLATE * ratio + [(w - TEMPLATE_SIZE * ratio) / 2, (h - TEMPLATE_SIZE * ratio) / 2]


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


def cp2tform_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M (src -> dst) that MATLAB's `cp2tform(src, dst, 'similarity')` gives for a face
    that is not mirrored, computed as the SphereFace / CosFace Python ports do (float64).

    cp2tform fits the other way round: the similarity carrying `dst` onto `src` in the least-squares
    sense (linear in sc = s cos t, ss = s sin t, tx, ty), then inverts it. With noisy landmarks this
    differs a little from `similarity_transform` (whose squares are measured in the crop).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    n = len(dst)
    x, y = dst[:, :1], dst[:, 1:]
    rows = np.vstack([np.hstack([x, y, np.ones((n, 1)), np.zeros((n, 1))]),
                      np.hstack([y, -x, np.zeros((n, 1)), np.ones((n, 1))])])
    if np.linalg.matrix_rank(rows) < 4:
        raise DataError("landmarks: all five points coincide; cannot align")
    (sc, ss, tx, ty), *_ = np.linalg.lstsq(rows, np.vstack([src[:, :1], src[:, 1:]]).ravel(), rcond=None)
    # [u v 1] = [x y 1] @ back: the fit dst -> src, row-vector convention, as cp2tform writes it.
    back = np.array([[sc, -ss, 0.0], [ss, sc, 0.0], [tx, ty, 1.0]])
    forward = np.linalg.inv(back)
    return forward[:, :2].T.copy()


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Warp uint8 (H, W, C) `image` by the 2x3 `matrix` (image -> crop) into a crop of `size` (one
    side, or (height, width)).

    Bilinear, outside the image black, exactly as OpenCV 4.x's `cv2.warpAffine(image, matrix,
    (width, height), borderValue=0)`: the inverse map in double, each position rounded to 1/32 pixel
    in integers, weights in 1/32768, the sum rounded once.
    """
    out_h, out_w = crop_shape(size)
    m = np.asarray(matrix, dtype=np.float64).reshape(-1).copy()
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    m[0], m[4] = m[4] * det, m[0] * det
    m[1] *= -det
    m[3] *= -det
    m[2], m[5] = -m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]
    xs = np.arange(out_w, dtype=np.float64)
    ys = np.arange(out_h, dtype=np.float64)
    # 1024 = 2^10 sub-steps, then >> 5: 1/32-pixel positions (OpenCV's AB_BITS and INTER_BITS).
    adelta = np.rint(m[0] * xs * 1024).astype(np.int64)
    bdelta = np.rint(m[3] * xs * 1024).astype(np.int64)
    x0 = np.rint((m[1] * ys + m[2]) * 1024).astype(np.int64) + 16
    y0 = np.rint((m[4] * ys + m[5]) * 1024).astype(np.int64) + 16
    fx_all = (x0[:, None] + adelta[None, :]) >> 5
    fy_all = (y0[:, None] + bdelta[None, :]) >> 5
    sx, sy, fx, fy = fx_all >> 5, fy_all >> 5, fx_all & 31, fy_all & 31
    h, w = image.shape[:2]
    acc = np.zeros((out_h, out_w, image.shape[2]), dtype=np.int64)
    for dy, wy in ((0, 32 - fy), (1, fy)):
        for dx, wx in ((0, 32 - fx), (1, fx)):
            yy, xx = sy + dy, sx + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)  # outside the photo: black
            # Only the crop's taps are read (never a converted copy of the whole photo).
            taps = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.int64)
            acc += np.where(inside[..., None], taps, 0) * (wy * wx * 32)[..., None]
    return ((acc + (1 << 14)) >> 15).clip(0, 255).astype(np.uint8)


def crop_transform(landmarks: np.ndarray, size: int | tuple[int, int] = TEMPLATE_SIZE) -> np.ndarray:
    """The 2x3 matrix (image -> crop) that the crop family of `size` (see `crop_family`) computes from
    the five landmarks (float64 (5, 2), image pixels)."""
    points = np.asarray(landmarks, np.float64).reshape(5, 2).astype(np.float32)
    dst = template(size).astype(np.float32)
    if crop_family(size) == "sphereface":
        return cp2tform_similarity(points, dst)
    # float32 landmarks and template, as the reference (its transform is then float32-exact too).
    return similarity_transform(points, dst)


def align_face(image: np.ndarray, landmarks: np.ndarray | Sequence[float],
               size: int | tuple[int, int] = TEMPLATE_SIZE) -> np.ndarray:
    """The aligned uint8 RGB crop of `size` (one side, or (height, width)) of the face whose 5 landmarks
    are given (image pixels)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image: expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    points = parse_landmarks(landmarks) if isinstance(landmarks, str) else np.asarray(landmarks, np.float64).reshape(5, 2)
    return warp_affine(image, crop_transform(points, size), size)
