"""Small pictures of enrolled faces, so that a search result can show who it matched.

Faces enrolled through the server keep their aligned crop as a JPEG in `<gallery>.faces/<identity>/`,
named by a hash of the row's source. Rows added by `irface gallery` have a photo file as their
source: its picture is made on demand, downscaled, and kept in memory.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

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

    def put(self, identity: str, source: str, crop: np.ndarray) -> Path:
        """Write the face's picture (atomically); `identity` must be a validated name."""
        path = self.folder / identity / f"{thumbnail_key(source)}.jpg"
        with atomic_write(path, "wb") as f:
            f.write(_jpeg(crop))
        return path

    def remove_identity(self, identity: str) -> None:
        shutil.rmtree(self.folder / identity, ignore_errors=True)

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
        stored = next(iter(self.folder.glob(f"*/{key}.jpg")), None) if self.folder.is_dir() else None
        if stored is not None:
            try:
                return stored.read_bytes()
            except OSError:
                return None
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
