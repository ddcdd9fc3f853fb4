"""Training datasets: every one yields `(uint8 tensor (3, H, W) RGB, int label)` and has `num_classes`.

Decoding stays in the worker processes; normalisation happens on the training device
(`irface.data.transforms.normalize`), so batches cross process and device boundaries as uint8.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from irface.data.badimages import BadImageCounter
from irface.data.images import IMAGE_SUFFIXES, decode_image
from irface.errors import DataError
from irface.utils import atomic_write

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_IMAGES = 100  # as the config key `max_bad_images`
CLASSES_NAME = "classes.txt"  # an image folder's class names, line i = class i: beside a packed .rec, in a run


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
    """A folder of class subfolders (`root/<identity>/<image>.jpg`); class indices follow sorted names.

    `classes[i]` is the folder name of class i (`save_classes` writes them, one a line, for the run).
    Undecodable images are skipped (replaced by the next decodable one, with its own label) and
    counted; past `max_bad_images` in one process the dataset raises `DataError`.
    """

    def __init__(self, root: str | Path, image_size: int = 112, max_bad_images: int = 100):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{self.root}: no class subfolders (expected root/<identity>/<image>.jpg)")
        self.samples: list[tuple[Path, int]] = []
        for idx, name in enumerate(self.classes):
            files = sorted(p for p in (self.root / name).iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not files:
                raise DataError(f"{self.root / name}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            self.samples += [(p, idx) for p in files]
        self.num_classes = len(self.classes)
        self.image_size = image_size
        self.bad = BadImageCounter(max_bad_images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for attempt in range(n):
            path, label = self.samples[(i + attempt) % n]
            try:
                img = decode_image(path.read_bytes(), self.image_size, str(path))
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror})") from None
            except DataError as e:
                self.bad.skip(e)
                continue
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label
        raise DataError(f"{self.root}: no decodable image left")

    def save_classes(self, folder: str | Path) -> None:
        """Write the class names in index order into `folder`/CLASSES_NAME, one a line (line i is class i)."""
        with atomic_write(Path(folder) / CLASSES_NAME, "w") as f:
            f.write("".join(f"{name}\n" for name in self.classes))


def open_train_dataset(path: str | Path, image_size: int = 112,
                       max_bad_images: int = DEFAULT_MAX_BAD_IMAGES) -> Dataset:
    """Open training data as users have it: a RecordIO folder (train.rec/.idx/property) or an image folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such training data folder")
    from irface.data.recordio import REC_NAME, RecordIODataset, recordio_folder

    path = recordio_folder(path)
    if (path / REC_NAME).exists():
        # The limit is passed only when set, so the call stays `RecordIODataset(path, image_size=...)`.
        extra = {} if max_bad_images == DEFAULT_MAX_BAD_IMAGES else {"max_bad_images": max_bad_images}
        return RecordIODataset(path, image_size=image_size, **extra)
    if path.is_file():
        raise DataError(f"{path}: expected a folder (train.rec/train.idx/property, or class subfolders)")
    return ImageFolderDataset(path, image_size=image_size, max_bad_images=max_bad_images)
