"""Small pictures of enrolled faces, so that a search result can show who it matched.

Faces enrolled through the server keep their aligned crop as a JPEG in `<gallery>.faces/`, named by
a hash of the row's source (a search result's source finds its picture in one look-up). Rows added
by `irface gallery` have a photo file as their source and the face's box: their picture is cut from
that photo on demand (the box with a margin) and kept in memory.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from irface.utils import atomic_write

THUMBNAIL_SIDE = 160
_CACHE_SIZE = 512


def thumbnail_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _jpeg(image: np.ndarray) -> bytes:
    img = Image.fromarray(np.ascontiguousarray(image))
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


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


class ThumbnailStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        # key -> (photo file, face box or None), from search results: what `get` may cut a picture from
        self._sources: OrderedDict[str, tuple[str, Optional[Sequence[float]]]] = OrderedDict()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def beside(cls, gallery_path: str | Path) -> "ThumbnailStore":
        path = Path(gallery_path)
        return cls(path.with_name(path.name + ".faces"))

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.jpg"

    def put(self, source: str, crop: np.ndarray) -> Path:
        """Write the picture of the face whose gallery row has `source` (atomically)."""
        path = self._path(thumbnail_key(source))
        with atomic_write(path, "wb") as f:
            f.write(_jpeg(crop))
        return path

    def remove(self, sources: Iterable[str]) -> None:
        for source in sources:
            self._path(thumbnail_key(source)).unlink(missing_ok=True)

    def url(self, source: str, box: Optional[Sequence[float]] = None) -> str:
        """The thumbnail's URL path for a row's `source`; remembered so that `get` may cut it from the photo."""
        key = thumbnail_key(source)
        with self._lock:
            self._sources[key] = (source, box)
            self._sources.move_to_end(key)
            while len(self._sources) > 4 * _CACHE_SIZE:
                self._sources.popitem(last=False)
        return f"/v1/gallery/thumbnail/{key}"

    def get(self, key: str) -> Optional[bytes]:
        """JPEG bytes for `key` (24 hex digits), or None."""
        if len(key) != 24 or any(c not in "0123456789abcdef" for c in key):
            return None
        try:
            return self._path(key).read_bytes()
        except OSError:
            pass
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            source, box = self._sources.get(key, (None, None))
        if source is None or not Path(source).is_file():
            return None
        from irface.errors import UserError
        from irface.infer.images import open_rgb

        try:
            data = _jpeg(_around(open_rgb(source), box))
        except UserError:
            return None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return data
