"""From a photo to aligned face crops: detect (when needed), pick the face(s), align to the model's size.

`size` is the model's crop: one side (112 by default) or (height, width) for a model that is not
square (SphereFace's 112x96); `irface.data.align` places the five points for each.

A photo whose pixels are exactly the model's input size (112x112 by default) is taken as an already
aligned crop, the form `.bin` sets, RecordIO archives and `irface align` outputs have; any other photo
goes through the detector and each face is aligned by its 5 landmarks. `mode` forces either way:
"aligned" uses the whole image as the crop (resized like `.bin` images when its size differs),
"detect" always detects.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from irface.errors import ConfigError, DataError
from irface.data.align import align_face

log = logging.getLogger(__name__)

MODES = ("auto", "aligned", "detect")


@dataclass
class PhotoFace:
    """One face ready to embed: its name (`photo.jpg`, or `photo.jpg#k` with all faces), the aligned
    uint8 (size, size, 3) RGB crop, and where it was found (None when the input was used as a crop)."""

    name: str
    crop: np.ndarray
    box: Optional[np.ndarray] = None
    score: Optional[float] = None
    landmarks: Optional[np.ndarray] = None

    def to_dict(self) -> dict[str, Any]:
        from irface.detect.retinaface import face_json

        out: dict[str, Any] = {"name": self.name}
        if self.box is not None:
            out.update(face_json(self.box, self.score, self.landmarks))
        return out


@functools.lru_cache(maxsize=1)
def default_detector():
    """The detector with its default settings, made once per process."""
    from irface.detect import load_detector

    return load_detector()


def face_name(name: str, k: int) -> str:
    """The name of a photo's k-th face when every face is kept (`photo.jpg#0` is the largest)."""
    return f"{name}#{k}"


def no_face_error(name: str, detector=None) -> DataError:
    """The one line for a photo in which the detector found no face, with what it looked for."""
    detector = detector if detector is not None else default_detector()
    return DataError(f"{name}: no face found ({detector.describe()})")


def is_aligned_crop(image: np.ndarray, size: int | tuple[int, int] = 112) -> bool:
    """How "auto" decides: an image of exactly the crop's size (size x size, or (height, width)) is an aligned crop."""
    from irface.data.images import crop_shape

    return tuple(image.shape[:2]) == crop_shape(size)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown face mode '{mode}' (use {', '.join(MODES)})")


def faces_from_image(image_rgb: np.ndarray, name: str, *, mode: str = "auto", all_faces: bool = False,
                     detector=None, size: int | tuple[int, int] = 112) -> list[PhotoFace]:
    """The face crop(s) of one photo (uint8 (H, W, 3) RGB); an empty list when no face is found.

    With `all_faces` False and several faces, the largest is returned and a warning names the photo.
    """
    _check_mode(mode)
    if mode == "aligned" or (mode == "auto" and is_aligned_crop(image_rgb, size)):
        crop = image_rgb
        if not is_aligned_crop(image_rgb, size):
            from irface.data.images import resize_center

            crop = resize_center(image_rgb, size)
        return [PhotoFace(name, crop)]
    detector = detector if detector is not None else default_detector()
    faces = detector.detect(image_rgb)
    if not faces:
        return []
    if not all_faces and len(faces) > 1:
        log.warning("%s: %d faces found; using the largest (--all-faces embeds each)", name, len(faces))
    return [PhotoFace(face_name(name, k) if all_faces else name, align_face(image_rgb, f.landmarks, size), f.box,
                      f.score, f.landmarks) for k, f in enumerate(faces if all_faces else faces[:1])]


def faces_from_file(path: str | Path, *, mode: str = "auto", all_faces: bool = False, detector=None,
                    size: int | tuple[int, int] = 112, name: Optional[str] = None) -> list[PhotoFace]:
    """`faces_from_image` on an image file, read upright (EXIF orientation applied), any colour mode.

    A missing, unreadable or oversized file raises DataError (one line naming it).
    """
    from irface.infer.images import open_rgb

    _check_mode(mode)
    path = Path(path)
    return faces_from_image(open_rgb(path), str(path) if name is None else name, mode=mode,
                            all_faces=all_faces, detector=detector, size=size)


def largest_face(path: str | Path, **options) -> PhotoFace:
    """The one face of a photo (the largest when there are several); DataError when there is none."""
    faces = faces_from_file(path, all_faces=False, **options)
    if not faces:
        raise no_face_error(str(path), options.get("detector"))
    return faces[0]


def faces_from_source(source, *, mode: str = "auto", all_faces: bool = False, detector=None,
                      size: int | tuple[int, int] = 112) -> list[PhotoFace]:
    """The faces of one `irface.infer.images.FaceSource`: a photo file goes through `faces_from_file`;
    a RecordIO record is an aligned crop already."""
    if source.photo is None or mode == "aligned":
        return [PhotoFace(source.name, source.load())]
    return faces_from_file(source.photo, mode=mode, all_faces=all_faces, detector=detector, size=size,
                           name=source.name)


def detect_files(inputs, detector) -> dict[str, Any]:
    """Detect the faces of every photo under `inputs` (files or folders): `{"photos": [{"path", "width",
    "height", "faces": [{"box", "score", "landmarks"}]}], "skipped": [{"name", "reason"}]}`."""
    from irface.infer.images import collect_faces, open_rgb

    photos, skipped = [], []
    for source in collect_faces(inputs):
        try:
            if source.photo is None:
                raise DataError(f"{source.name}: a RecordIO record, not a photo")
            image = open_rgb(source.photo)
        except DataError as e:
            log.warning("skipped %s", e)
            skipped.append({"name": source.name, "reason": str(e)})
            continue
        photos.append({"path": source.name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                       "faces": [f.to_dict() for f in detector.detect(image)]})
    return {"photos": photos, "skipped": skipped}


def align_photo(path: str | Path, output_dir: str | Path, *, largest: bool = False, size: int | tuple[int, int] = 112,
                detector=None) -> list[tuple[Path, PhotoFace]]:
    """Detect the faces of a photo and write each aligned crop as `<output_dir>/<stem>_<k>.png`
    (k = 0 for the largest); DataError when there is none."""
    from irface.errors import OutputError
    from irface.infer.images import save_image

    path, output_dir = Path(path), Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: is a file; give a folder for the crops (or --landmarks for one crop)")
    faces = faces_from_file(path, mode="detect", all_faces=not largest, detector=detector, size=size)
    if not faces:
        raise no_face_error(str(path), detector)
    written = []
    for k, face in enumerate(faces):
        target = output_dir / f"{path.stem}_{k}.png"
        save_image(target, face.crop)
        written.append((target, face))
    return written
