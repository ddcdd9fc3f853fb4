"""Calibration images for int8 quantisation: a RecordIO training folder, a folder of aligned face crops, or a `.bin`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from irface.data.recordio import REC_NAME
from irface.data.bin import read_bin
from irface.data.images import IMAGE_SUFFIXES, decode_image, decode_images, list_image_files
from irface.errors import DataError
from irface.export.options import DEFAULT_CALIB_COUNT

log = logging.getLogger(__name__)


def _spread(n: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over range(n), so calibration sees the whole set, not its first identities."""
    if count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(int))


def load_calibration_images(path: str | Path, count: int = DEFAULT_CALIB_COUNT, size: int = 112) -> np.ndarray:
    """Up to `count` uint8 (N, size, size, 3) RGB images, spread evenly over a RecordIO folder (`train.rec`
    and `train.idx`), an image folder (recursive) or a `.bin`."""
    path = Path(path)
    if count <= 0:
        raise DataError(f"{path}: calibration needs at least one image (count {count})")
    if not path.exists():
        raise DataError(f"{path}: no such calibration folder or .bin file")
    if (path.is_dir() and (path / REC_NAME).is_file()) or path.suffix in (".rec", ".idx"):
        # The training set as users have it: calibrate on faces the model was trained on, and keep the
        # verification sets for measuring what int8 costs.
        from irface.data.recordio import RecordIODataset

        dataset = RecordIODataset(path, size)
        if len(dataset) == 0:
            raise DataError(f"{path}: the RecordIO folder holds no images")
        idx = _spread(len(dataset), count)
        images = decode_images([dataset.read(int(i))[1] for i in idx], size, str(path))
    elif path.is_dir():
        files = list_image_files(path)
        if not files:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this calibration folder")
        chosen = [files[i] for i in _spread(len(files), count)]
        images = np.stack([decode_image(p.read_bytes(), size, str(p)) for p in chosen])
    else:
        bins, _ = read_bin(path)
        if not bins:
            raise DataError(f"{path}: the .bin holds no images")
        idx = _spread(len(bins), count)
        images = decode_images([bins[i] for i in idx], size, str(path))
    log.info("calibration: %d images from %s", len(images), path)
    return images
