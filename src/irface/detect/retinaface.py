"""RetinaFace (MobileNet-0.25, biubug6/Pytorch_Retinaface) on onnxruntime: boxes, scores, 5 landmarks.

The network gives, for every prior box, offsets of the face box and of its 5 landmarks and a face
probability. Everything around it is here, in numpy: resizing the photo, the priors (anchors), the
decoding of the offsets, score filtering and non-maximum suppression, and mapping back to the
photo's pixels. Landmarks come in ArcFace's order: left eye, right eye, nose tip, left and right
mouth corner, "left" as the viewer sees it.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

from irface.detect.settings import DEFAULT_DETECTOR
from irface.device import onnx_session
from irface.errors import ConfigError, DataError, import_extra

log = logging.getLogger(__name__)

# The network's training set-up (biubug6's cfg_mnet): three feature maps, two prior sizes on each.
STRIDES = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)  # subtracted from BGR pixels, no scaling
D = DEFAULT_DETECTOR


@dataclass
class DetectedFace:
    """One face in a photo, in the photo's pixels: box [x1, y1, x2, y2], score in [0, 1], landmarks (5, 2)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    def to_dict(self) -> dict:
        return face_json(self.box, self.score, self.landmarks)


def face_json(box, score: Optional[float], landmarks) -> dict:
    """The one JSON form of where a face is (`irface detect --json`, `irface embed`'s faces, the server):
    box [x1, y1, x2, y2] and landmarks [[x, y] x 5] in pixels to 2 decimals, score to 5; None stays None."""
    return {"box": [round(float(v), 2) for v in box],
            "score": None if score is None else round(float(score), 5),
            "landmarks": None if landmarks is None else [[round(float(x), 2), round(float(y), 2)] for x, y in landmarks]}


@functools.lru_cache(maxsize=8)
def priors(height: int, width: int) -> np.ndarray:
    """float32 (A, 4) priors [cx, cy, w, h] in input pixels, in the network's output order."""
    out = []
    for stride, sizes in zip(STRIDES, MIN_SIZES):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], axis=-1).reshape(-1, 1, 2)
        wh = np.array([[s, s] for s in sizes], dtype=np.float64).reshape(1, -1, 2)
        cell = np.concatenate([np.broadcast_to(centres, (len(centres), len(sizes), 2)),
                               np.broadcast_to(wh, (len(centres), len(sizes), 2))], axis=-1)
        out.append(cell.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode(loc: np.ndarray, landm: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets -> boxes (A, 4) [x1, y1, x2, y2] and landmarks (A, 5, 2), in input pixels."""
    centre = prior[:, :2] + loc[:, :2] * VARIANCES[0] * prior[:, 2:]
    size = prior[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    points = prior[:, None, :2] + landm.reshape(-1, 5, 2) * VARIANCES[0] * prior[:, None, 2:]
    return boxes, points


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class Detector:
    """Faces in an RGB photo: `detect(uint8 (H, W, 3)) -> list[DetectedFace]`, largest first.

    The photo is resized so that its longer side is `det_size` pixels (smaller photos are enlarged,
    which finds small faces in them), padded to a multiple of 32, and run once.
    """

    def __init__(self, min_score: float = D.min_score, min_size: float = D.min_size, max_faces: int = D.max_faces,
                 det_size: int = D.det_size, nms_threshold: float = D.nms_threshold, device: str = "cpu",
                 threads: int = 0):
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"--min-score {min_score}: a face score lies in [0, 1]")
        if min_size < 0:
            raise ConfigError(f"--min-size must be at least 0 pixels, got {min_size}")
        if max_faces < 0:
            raise ConfigError(f"--max-faces must be at least 0 (0: all), got {max_faces}")
        if not 32 <= det_size <= 4096:
            raise ConfigError(f"--det-size must lie in [32, 4096] pixels, got {det_size}")
        self.min_score, self.min_size, self.max_faces = float(min_score), float(min_size), int(max_faces)
        self.det_size, self.nms_threshold = int(det_size), float(nms_threshold)
        self.session = _session(device, threads)
        self.input_name = self.session.get_inputs()[0].name

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        scale = self.det_size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        # reducing_gap=1: shrink by whole factors with a box filter first (five times faster than
        # bilinear over the whole photo at 2x; what the detector sees differs by less than its noise).
        resized = image if (nh, nw) == (h, w) else np.asarray(
            Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=1.0))
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        x = np.zeros((1, 3, ph, pw), dtype=np.float32)  # padding = the mean colour, i.e. zero input
        # Planar BGR in uint8 first (a cheap byte shuffle), then one subtraction into the input.
        bgr = np.ascontiguousarray(resized.transpose(2, 0, 1)[::-1])
        np.subtract(bgr, BGR_MEAN.reshape(3, 1, 1), out=x[0, :, :nh, :nw], dtype=np.float32)
        # The scale actually applied on each axis (rounding makes them differ by a hair).
        return x, (nw / w + nh / h) / 2

    def describe(self) -> str:
        """What a face must be to be found, for "no face found" messages."""
        return f"none with score >= {self.min_score:g} and at least {self.min_size:g} px; see --min-score, --min-size"

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face in `image` (uint8 (H, W, 3) RGB), in its pixels, largest box first."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"detect: expected a uint8 (H, W, 3) RGB image, got "
                            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
        x, scale = self._prepare(image)
        loc, conf, landm = self.session.run(None, {self.input_name: x})
        scores = conf[0, :, 1]
        keep = np.flatnonzero(scores >= self.min_score)
        if not keep.size:
            return []
        prior = priors(x.shape[2], x.shape[3])[keep]
        boxes, points = decode(loc[0, keep], landm[0, keep], prior)
        scores = scores[keep]
        kept = nms(boxes, scores, self.nms_threshold)
        boxes, points, scores = boxes[kept] / scale, points[kept] / scale, scores[kept]
        h, w = image.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        faces = [DetectedFace(b.astype(np.float64), float(s), p.astype(np.float64))
                 for b, s, p in zip(boxes, scores, points)]
        faces = [f for f in faces if f.size >= max(self.min_size, 1.0)]
        faces.sort(key=lambda f: (-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), -f.score))
        return faces[:self.max_faces] if self.max_faces else faces


def _session(device: str, threads: int):
    from irface.detect.weights import retinaface_onnx

    import_extra("onnxruntime", "face detection", "detect")
    return onnx_session(retinaface_onnx(), device, threads)


def load_detector(min_score: float = D.min_score, min_size: float = D.min_size, max_faces: int = D.max_faces,
                  det_size: int = D.det_size, nms_threshold: float = D.nms_threshold, device: str = "cpu",
                  threads: int = 0) -> Detector:
    """The RetinaFace detector from the `detect` extra's weights (ConfigError naming the extra when missing)."""
    return Detector(min_score=min_score, min_size=min_size, max_faces=max_faces, det_size=det_size,
                    nms_threshold=nms_threshold, device=device, threads=threads)
