"""Small pictures of enrolled faces, so that a search result can show who it matched.

A search result's picture is asked for by the matched face's id (`/v1/gallery/thumbnail/<face id>`), and
served only while that face is enrolled. Faces enrolled through the server keep their aligned crop as a
JPEG inside the gallery itself (`Gallery.add_many(..., thumbnails=...)`): written in the same change as
the face (the journal record, or the PostgreSQL transaction) and removed with it, and readable by every
worker. Rows added by `irface gallery` have a photo file as their source and the face's box: their
picture is cut from that photo on demand (the box with a margin) and kept in memory.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

THUMBNAIL_SIDE = 160
_CACHE_SIZE = 512
_KEY = re.compile(r"^[0-9]{1,18}$")


def thumbnail_jpeg(image: np.ndarray) -> bytes:
    """A picture (uint8 RGB) shrunk to at most THUMBNAIL_SIDE a side, as JPEG bytes."""
    img = Image.fromarray(np.ascontiguousarray(image))
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _legacy_key(source: str) -> str:
    # Servers before pictures lived in the gallery kept them in `<gallery>.faces/<this>.jpg`.
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _around(photo: np.ndarray, box: Optional[Sequence[float]], margin: float = 0.3) -> np.ndarray:
    """The face's box grown by `margin` of its size on each side, within the photo (the whole photo without a box)."""
    if box is None:
        return photo
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    h, w = photo.shape[:2]
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(w, int(x2 + dx) + 1), min(h, int(y2 + dy) + 1)
    return photo if right <= left or bottom <= top else photo[top:bottom, left:right]


class Thumbnails:
    """Pictures of a gallery's faces by face id: stored with the face, or cut from its photo file."""

    def __init__(self, gallery: Any):
        self.gallery = gallery
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # face id -> picture cut from a photo file
        self._lock = threading.Lock()

    @staticmethod
    def url(match: Any) -> Optional[str]:
        """The URL path of a search match's picture (None for a match without a face row)."""
        return None if match.face_id is None else f"/v1/gallery/thumbnail/{int(match.face_id)}"

    def get(self, key: str) -> Optional[bytes]:
        """JPEG bytes of face `key` (its id) while it is enrolled, or None."""
        if not _KEY.match(key):
            return None
        face_id = int(key)
        # A stored picture exists only while its face does (removed in the same change), so it needs no
        # look-up of the face first; the face's row is read only to cut a picture from its photo.
        stored = self.gallery.thumbnail(face_id)
        if stored is not None:
            return stored
        row = self.gallery.face(face_id)
        if row is None:  # removed (or never enrolled): its picture goes with it
            return None
        with self._lock:
            if face_id in self._cache:
                self._cache.move_to_end(face_id)
                return self._cache[face_id]
        data = self._legacy(row["source"]) or self._cut(row["source"], row["box"])
        if data is not None:
            with self._lock:
                self._cache[face_id] = data
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return data

    def _legacy(self, source: str) -> Optional[bytes]:
        path = getattr(self.gallery, "path", None)
        if path is None:
            return None
        try:
            return (path.with_name(path.name + ".faces") / f"{_legacy_key(source)}.jpg").read_bytes()
        except OSError:
            return None

    @staticmethod
    def _cut(source: str, box: Optional[Sequence[float]]) -> Optional[bytes]:
        if not Path(source).is_file():
            return None
        from irface.errors import UserError
        from irface.infer.images import open_rgb

        try:
            return thumbnail_jpeg(_around(open_rgb(source), box))
        except UserError:
            return None
