"""Small pictures of enrolled faces, so that a search result can show who it matched.

Faces enrolled through the server keep their aligned crop as a JPEG in `<gallery>.faces/`, named
by a hash of the row's source (so that a search result's source finds its picture in one look-up). Rows added by `irface gallery` have a photo file as their
source: its picture is made on demand, downscaled, and kept in memory.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional

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


class ThumbnailStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._sources: OrderedDict[str, str] = OrderedDict()  # key -> photo file, from search results
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

    def url(self, source: str) -> str:
        """The thumbnail's URL path for a row's `source`; remembered so that `get` may serve its photo."""
        key = thumbnail_key(source)
        with self._lock:
            self._sources[key] = source
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
            source = self._sources.get(key)
        if source is None or not Path(source).is_file():
            return None
        from irface.errors import UserError
        from irface.infer.images import open_rgb

        try:
            data = _jpeg(open_rgb(source))
        except UserError:
            return None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return data
