"""Reading the images users point at: files, folders (recursive, sorted), a RecordIO folder."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from irface.data.images import IMAGE_SUFFIXES, decode_image, decode_rgb, list_image_files
from irface.errors import DataError


def read_file(path: Path) -> bytes:
    """The bytes of `path`, with one-line errors for the usual mistakes."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None


def read_face(path: str | Path, size: int | tuple[int, int] = 112) -> np.ndarray:
    """An aligned face crop as uint8 (size, size, 3) RGB (size: one side or (height, width)); other sizes
    are resized as `decode_image` does."""
    path = Path(path)
    return decode_image(read_file(path), size, str(path))


def open_rgb(path: str | Path) -> np.ndarray:
    """A whole photo as uint8 (H, W, 3) RGB, EXIF orientation applied (`irface.data.images.decode_rgb`)."""
    path = Path(path)
    return decode_rgb(read_file(path), str(path), upright=True)


@dataclass
class FaceSource:
    """One input to embed: a name for the output's file list and a function that returns its image.

    `photo` is the image file when the source is one (it may then need detection, see
    `irface.infer.photo`); RecordIO records are aligned crops and have none.
    """

    name: str
    load: Callable[[], np.ndarray]
    photo: Optional[Path] = None


def _is_recordio(path: Path) -> bool:
    from irface.data.recordio import REC_NAME

    return (path.is_dir() and (path / REC_NAME).exists()) or (path.is_file() and path.suffix.lower() == ".rec")


def _recordio_sources(path: Path, size: int | tuple[int, int]) -> list[FaceSource]:
    # The RecordIO reader belongs to irface.data; imported only when a .rec is given.
    from irface.data.recordio import RecordIODataset

    dataset = RecordIODataset(path, image_size=size)
    rec = dataset.reader.rec_path

    def loader(i: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            # Decoded here, not through dataset[i]: training skips an undecodable record and hands
            # over the next one, which would put another face's embedding under this record's name.
            key, data, _ = dataset.read(i)
            return decode_image(data, size, f"{rec}: record {key}")

        return load

    return [FaceSource(f"{rec}#{i}", loader(i)) for i in range(len(dataset))]


def collect_faces(inputs: Sequence[str | Path], size: int | tuple[int, int] = 112) -> list[FaceSource]:
    """Faces from image files, folders of images (recursive, sorted by path) and RecordIO folders, in order.

    Raises DataError for a missing path or a folder with no images.
    """
    sources: list[FaceSource] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if _is_recordio(path):
            found = _recordio_sources(path, size)
            if not found:
                raise DataError(f"{path}: the RecordIO file holds no images")
            sources += found
        elif path.is_dir():
            files = list_image_files(path)
            if not files:
                raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            sources += [FaceSource(str(p), functools.partial(read_face, p, size), p) for p in files]
        else:
            sources.append(FaceSource(str(path), functools.partial(read_face, path, size), path))
    return sources


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 (H, W, 3) RGB atomically; the format follows the suffix (.png, .jpg, ...)."""
    from irface.errors import ConfigError
    from irface.utils import atomic_write

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or not path.suffix:
        raise ConfigError(f"{path}: unknown image format; use a suffix such as .png or .jpg")
    extra = {"quality": 95} if fmt == "JPEG" else {}
    with atomic_write(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(image)).save(f, format=fmt, **extra)
