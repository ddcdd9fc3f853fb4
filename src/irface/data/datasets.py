"""Training datasets: every one yields `(uint8 tensor (3, H, W) RGB, int label)` and has `num_classes`.

Decoding stays in the worker processes; normalisation happens on the training device
(`irface.data.transforms.normalize`), so batches cross process and device boundaries as uint8.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from irface.data.verification import decode_image
from irface.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ArrayDataset(Dataset):
    """In-memory images: uint8 (N, H, W, 3) RGB and N labels. For tests and synthetic runs."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], num_classes: int | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes if num_classes is not None else self.labels.max() + 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1))), int(self.labels[i])


class ImageFolderDataset(Dataset):
    """A folder of class subfolders (`root/<identity>/<image>.jpg`); class indices follow sorted names."""

    def __init__(self, root: str | Path, image_size: int = 112):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{self.root}: no class subfolders (expected root/<identity>/<image>.jpg)")
        self.samples: list[tuple[Path, int]] = []
        for idx, name in enumerate(self.classes):
            files = sorted(p for p in (self.root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{self.root / name}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            self.samples += [(p, idx) for p in files]
        self.num_classes = len(self.classes)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        img = decode_image(path.read_bytes(), self.image_size, str(path))
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label


def open_train_dataset(path: str | Path, image_size: int = 112) -> Dataset:
    """Open training data as users have it: a RecordIO folder (train.rec/.idx/property) or an image folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such training data folder")
    if path.is_file() and path.suffix == ".rec":
        path = path.parent
    if (path / "train.rec").exists():
        from irface.data.recordio import RecordIODataset

        return RecordIODataset(path, image_size=image_size)
    return ImageFolderDataset(path, image_size=image_size)
