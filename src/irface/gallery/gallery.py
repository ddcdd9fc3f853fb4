"""`Gallery`: enrolled faces of known people, searched by embedding (1:N, open-set).

One row per face: identity, source file, box, model fingerprint (an SQLite table), and its unit-length
fp32 embedding in a faiss index under the row's id. Optionally one mean template per identity
(`templates=True`): the mean of its faces' unit embeddings, searched instead of the faces.

Thread safety: searches share a read lock; `add`, `remove` and the snapshot that `save` writes take the
write side, so a search sees a gallery before or after an add, never half of one. `save()` returns
once the file is on disk (written beside, renamed over, folder synced).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from irface.errors import GalleryError
from irface.gallery.index import FaceIndex, index_params
from irface.gallery.store import GalleryFile, write_gallery_file

_SCHEMA = """
CREATE TABLE faces (id INTEGER PRIMARY KEY, identity TEXT NOT NULL, source TEXT NOT NULL,
                    x1 REAL, y1 REAL, x2 REAL, y2 REAL, fingerprint TEXT NOT NULL);
CREATE INDEX faces_identity ON faces(identity);
CREATE TABLE templates (identity TEXT PRIMARY KEY, count INTEGER NOT NULL, total BLOB NOT NULL);
"""
_MAX_NAME = 128
# Letters of any script, digits, space and . _ - ' ( ) ,  -- no path separators or control characters.
_NAME_RE = re.compile(r"^[\w .'(),\-]+$")


def validate_identity(name: Any) -> str:
    """Return `name` if it is a usable identity (also a safe folder name), else raise GalleryError."""
    if not isinstance(name, str) or not name.strip():
        raise GalleryError("identity name is empty")
    if name != name.strip():
        raise GalleryError(f"identity name {name!r} starts or ends with a space")
    if len(name) > _MAX_NAME:
        raise GalleryError(f"identity name is longer than {_MAX_NAME} characters")
    if name in (".", "..") or not _NAME_RE.match(name):
        raise GalleryError(f"identity name {name!r}: use letters, digits, spaces and . _ - ' ( ) , only "
                           "(no path characters)")
    return name


@dataclass(frozen=True)
class Match:
    """One candidate for a query: the identity, its cosine similarity, the enrolled photo that matched.

    `accepted` is False when a threshold was given and the similarity is not above it: a query whose
    first match is not accepted is "unknown" (open-set).
    """

    identity: str
    similarity: float
    source: Optional[str]
    accepted: bool = True


UNKNOWN = "unknown"


def decision(matches: Sequence[Match]) -> str:
    """The identity a query is given: the first match if accepted, else `UNKNOWN`."""
    return matches[0].identity if matches and matches[0].accepted else UNKNOWN


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer goes before new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _unit_rows(embeddings: Any, dim: int, what: str) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise GalleryError(f"{what}: expected embeddings of shape (N, {dim}), got {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise GalleryError(f"{what}: embeddings contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GalleryError(f"{what}: an embedding is all zeros")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


class Gallery:
    """A face gallery in memory, backed by one file (see `irface.gallery.store`)."""

    def __init__(self, path: Path, header: dict[str, Any], db: sqlite3.Connection, index: FaceIndex):
        self.path = Path(path)
        self.fingerprint: str = header["fingerprint"]
        self.embedding_size: int = int(header["embedding_size"])
        self.templates: bool = bool(header.get("templates", False))
        self.model: Optional[str] = header.get("model")
        self.created: str = header.get("created", "")
        self._next_id: int = int(header.get("next_id", 0))
        self._db = db
        self._index = index
        self._lock = _ReadWriteLock()
        self._save_lock = threading.Lock()
        self._db_lock = threading.Lock()  # one sqlite connection, used from many threads
        self._load_codes()
        self._template_cache: Optional[tuple[list[str], np.ndarray, dict[str, int]]] = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, fingerprint: str, embedding_size: int, index: str = "flat",
               templates: bool = False, model: Optional[str] = None,
               params: Optional[dict[str, Any]] = None) -> "Gallery":
        """A new, empty gallery that will be written to `path` by `save()` (nothing is written before)."""
        if not isinstance(fingerprint, str) or not fingerprint:
            raise GalleryError("a gallery needs the model's fingerprint (irface.gallery.model_fingerprint)")
        if int(embedding_size) < 1:
            raise GalleryError(f"embedding size must be positive, got {embedding_size}")
        path = Path(path)
        if path.is_dir():
            raise GalleryError(f"{path}: is a folder; a gallery is one file (e.g. {path}/faces.gallery)")
        params = index_params(index, params)
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(_SCHEMA)
        header = {"fingerprint": fingerprint, "embedding_size": int(embedding_size), "templates": bool(templates),
                  "model": model, "created": _now(), "next_id": 0}
        return cls(path, header, db, FaceIndex(index, int(embedding_size), params))

    @classmethod
    def open(cls, path: str | Path, *, fingerprint: Optional[str] = None) -> "Gallery":
        """Read and verify a gallery file; with `fingerprint`, refuse a gallery built with another model."""
        path = Path(path)
        with GalleryFile(path) as gf:
            header = gf.header
            if fingerprint is not None:
                _check_fingerprint(path, header, fingerprint)
            try:
                db = _db_from_bytes(gf.read_section("metadata"))
                db.execute("SELECT count(*) FROM faces").fetchone()
            except sqlite3.DatabaseError as e:
                raise GalleryError(f"{path}: gallery metadata is unreadable ({e})") from None
            index = FaceIndex.read(header["index"], int(header["embedding_size"]), header.get("index_params", {}),
                                   gf.section_reader("index") if gf.has("index") else None)
        gallery = cls(path, header, db, index)
        if len(index) != header.get("faces", len(index)) or len(index) != gallery._count_faces():
            raise GalleryError(f"{path}: gallery index and metadata disagree ({len(index)} vectors, "
                               f"{gallery._count_faces()} rows); rebuild it")
        return gallery

    def check_model(self, fingerprint: str) -> None:
        """Refuse (GalleryError, one line) to serve queries embedded by a model other than the gallery's."""
        _check_fingerprint(self.path, {"fingerprint": self.fingerprint, "model": self.model}, fingerprint)

    # ---- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock.read():
            return len(self._index)

    def _count_faces(self) -> int:
        with self._db_lock:
            return int(self._db.execute("SELECT count(*) FROM faces").fetchone()[0])

    def _load_codes(self) -> None:
        # face id -> identity code, for ranking identities from face hits without a table lookup.
        with self._db_lock:
            rows = self._db.execute("SELECT id, identity FROM faces").fetchall()
        self._names: list[str] = []
        self._code: dict[str, int] = {}
        self._identity_of = np.full(max(self._next_id, 1), -1, np.int64)
        for face_id, identity in rows:
            self._identity_of[face_id] = self._code_for(identity)

    def _code_for(self, identity: str) -> int:
        code = self._code.get(identity)
        if code is None:
            code = self._code[identity] = len(self._names)
            self._names.append(identity)
        return code

    def identities(self) -> list[str]:
        """Enrolled identities, sorted."""
        with self._lock.read(), self._db_lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT identity FROM faces ORDER BY identity")]

    def faces(self, identity: Optional[str] = None) -> list[dict[str, Any]]:
        """The rows of the metadata table (of one identity if given): id, identity, source, box."""
        query = "SELECT id, identity, source, x1, y1, x2, y2 FROM faces"
        args: tuple = ()
        if identity is not None:
            query, args = query + " WHERE identity = ?", (identity,)
        with self._lock.read(), self._db_lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [{"id": r[0], "identity": r[1], "source": r[2],
                 "box": None if r[3] is None else [r[3], r[4], r[5], r[6]]} for r in rows]

    def info(self) -> dict[str, Any]:
        with self._lock.read():
            with self._db_lock:
                n_ids = self._db.execute("SELECT count(DISTINCT identity) FROM faces").fetchone()[0]
            return {"path": str(self.path), "faces": len(self._index), "identities": int(n_ids),
                    "embedding_size": self.embedding_size, "index": self._index.kind,
                    "index_params": dict(self._index.params), "templates": self.templates,
                    "fingerprint": self.fingerprint, "model": self.model, "created": self.created,
                    "file_bytes": self.path.stat().st_size if self.path.is_file() else None}

    # ---- changes ------------------------------------------------------------------------------
    def add(self, identity: str, embeddings: Any, sources: Sequence[str],
            boxes: Optional[Any] = None) -> list[int]:
        """Enrol faces of one identity (embeddings (N, E), one source file each); returns their row ids.

        The embeddings are L2-normalised here. Not on disk until `save()`.
        """
        validate_identity(identity)
        return self.add_many([identity] * len(sources), embeddings, sources, boxes)

    def add_many(self, identities: Sequence[str], embeddings: Any, sources: Sequence[str],
                 boxes: Optional[Any] = None) -> list[int]:
        """Enrol faces of many identities at once (one identity and source per row): one index add."""
        for name in set(identities):
            validate_identity(name)
        what = f"faces of '{identities[0]}'" if len(set(identities)) == 1 else "faces"
        if not len(identities) and not len(sources):
            return []
        x = _unit_rows(embeddings, self.embedding_size, what)
        n = len(x)
        sources = [str(s) for s in sources]
        if len(sources) != n or len(identities) != n:
            raise GalleryError(f"{what}: {n} embeddings but {len(sources)} sources and {len(identities)} identities")
        if boxes is None:
            box_rows = [(None, None, None, None)] * n
        else:
            b = np.asarray(boxes, dtype=np.float64)
            if b.shape != (n, 4):
                raise GalleryError(f"{what}: boxes must have shape ({n}, 4), got {tuple(b.shape)}")
            box_rows = [tuple(map(float, r)) for r in b]
        if n == 0:
            return []
        names = list(identities)
        with self._lock.write():
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._index.add(ids, x)
            with self._db_lock, self._db:
                self._db.executemany(
                    "INSERT INTO faces (id, identity, source, x1, y1, x2, y2, fingerprint) VALUES (?,?,?,?,?,?,?,?)",
                    [(int(i), who, s, *bx, self.fingerprint) for i, who, s, bx in zip(ids, names, sources, box_rows)])
                if self.templates:
                    self._add_to_templates(names, x)
            self._next_id += n
            if len(self._identity_of) < self._next_id:
                grown = np.full(max(self._next_id, 2 * len(self._identity_of)), -1, np.int64)
                grown[:len(self._identity_of)] = self._identity_of
                self._identity_of = grown
            self._identity_of[ids] = [self._code_for(who) for who in names]
            self._template_cache = None
        return ids.tolist()

    def _add_to_templates(self, names: list[str], x: np.ndarray) -> None:
        order = np.argsort(np.array(names, dtype=object), kind="stable")
        sorted_names = [names[i] for i in order]
        starts = [0] + [i for i in range(1, len(order)) if sorted_names[i] != sorted_names[i - 1]] + [len(order)]
        for a, b in zip(starts[:-1], starts[1:]):
            who = sorted_names[a]
            rows = x[order[a:b]]
            row = self._db.execute("SELECT count, total FROM templates WHERE identity = ?", (who,)).fetchone()
            count, total = (0, np.zeros(self.embedding_size)) if row is None else \
                (row[0], np.frombuffer(row[1], np.float64))
            self._db.execute("INSERT OR REPLACE INTO templates VALUES (?, ?, ?)",
                             (who, count + len(rows), (total + rows.sum(0, dtype=np.float64)).tobytes()))

    def train(self, sample: Any) -> None:
        """IVF only, before the first add: learn the lists from `sample` (N, E), e.g. every face to be enrolled.

        Without it an IVF gallery learns them from its first `add`, which may be one person's faces.
        """
        x = _unit_rows(sample, self.embedding_size, "training sample")
        with self._lock.write():
            self._index.train(x)

    def remove(self, identity: str) -> int:
        """Remove every face of `identity`; returns how many there were (0 if none)."""
        validate_identity(identity)
        with self._lock.write():
            with self._db_lock:
                ids = np.array([r[0] for r in self._db.execute("SELECT id FROM faces WHERE identity = ?",
                                                               (identity,))], np.int64)
                if not len(ids):
                    return 0
                self._index.remove(ids)
                with self._db:
                    self._db.execute("DELETE FROM faces WHERE identity = ?", (identity,))
                    self._db.execute("DELETE FROM templates WHERE identity = ?", (identity,))
            self._identity_of[ids] = -1
            self._template_cache = None
            return len(ids)

    # ---- search -------------------------------------------------------------------------------
    def search(self, embeddings: Any, top_k: int = 5, threshold: Optional[float] = None,
               by: Optional[str] = None) -> list[list[Match]]:
        """The `top_k` most similar identities for each query embedding (Q, E), best first.

        `by`: "faces" (best face of each identity) or "templates" (one mean per identity; the default
        when the gallery has them). With `threshold`, matches not above it have `accepted=False`.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise GalleryError(f"top-k must be a positive whole number, got {top_k!r}")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise GalleryError(f"threshold {threshold}: a cosine similarity lies in [-1, 1]")
        by = by or ("templates" if self.templates else "faces")
        if by not in ("faces", "templates") or (by == "templates" and not self.templates):
            raise GalleryError(f"search by '{by}': this gallery has "
                               f"{'faces and templates' if self.templates else 'faces only (built without --templates)'}")
        q = _unit_rows(embeddings, self.embedding_size, "query")
        with self._lock.read():
            if by == "templates":
                ranked = self._search_templates(q, top_k)
            else:
                ranked = self._search_faces(q, top_k)
            wanted = {fid for row in ranked for _, _, fid in row if fid is not None}
            sources = self._sources(wanted)
        return [[Match(name, sim, None if fid is None else sources.get(fid), threshold is None or sim > threshold) for name, sim, fid in row]
                for row in ranked]

    def nearest(self, embeddings: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The raw index answer: (similarities, face ids), each (Q, k), face id -1 past the gallery's end."""
        q = _unit_rows(embeddings, self.embedding_size, "query")
        with self._lock.read():
            return self._index.search(q, k)

    def tune(self, *, nprobe: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        """Search-time knobs of approximate indexes (IVF lists probed, HNSW candidate list); saved with it."""
        wanted = {k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None}
        with self._lock.write():
            self._index.tune(wanted)

    def _search_faces(self, q: np.ndarray, top_k: int) -> list[list[tuple[str, float, Optional[int]]]]:
        n = len(self._index)
        if not n:
            return [[] for _ in range(len(q))]
        # Several faces per identity: ask for more rows than identities wanted, widen until enough.
        k = min(n, top_k * 4 + 16)
        while True:
            sims, ids = self._index.search(q, k)
            rows: list[list[tuple[str, float, Optional[int]]]] = []
            short = False
            for srow, irow in zip(sims, ids):
                seen: dict[int, tuple[float, int]] = {}
                codes = self._identity_of[np.where(irow >= 0, irow, 0)]
                for s, i, c in zip(srow, irow, codes):
                    if i < 0 or c < 0 or c in seen:
                        continue
                    seen[int(c)] = (float(s), int(i))
                    if len(seen) == top_k:
                        break
                short |= len(seen) < top_k and (irow >= 0).all()
                rows.append([(self._names[c], s, i) for c, (s, i) in seen.items()])
            if not short or k >= n:
                return rows
            k = min(n, k * 4)

    def _search_templates(self, q: np.ndarray, top_k: int) -> list[list[tuple[str, float, Optional[int]]]]:
        if self._template_cache is None:
            with self._db_lock:
                rows = self._db.execute("SELECT identity, total FROM templates ORDER BY identity").fetchall()
                first = dict(self._db.execute("SELECT identity, min(id) FROM faces GROUP BY identity").fetchall())
            names = [r[0] for r in rows]
            means = np.array([np.frombuffer(r[1], np.float64) for r in rows], np.float32).reshape(-1, self.embedding_size)
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
            self._template_cache = (names, means, first)
        names, means, first = self._template_cache
        if not names:
            return [[] for _ in range(len(q))]
        sims = q @ means.T
        k = min(top_k, len(names))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        # A template is no photo: the identity's first enrolled face stands for it.
        return [[(names[j], float(sims[r, j]), first.get(names[j])) for j in top[r]] for r in range(len(q))]

    def _sources(self, ids: set[int]) -> dict[int, str]:
        if not ids:
            return {}
        with self._db_lock:
            marks = ",".join("?" * len(ids))
            return dict(self._db.execute(f"SELECT id, source FROM faces WHERE id IN ({marks})", tuple(ids)).fetchall())

    # ---- disk ---------------------------------------------------------------------------------
    def save(self, path: Optional[str | Path] = None) -> Path:
        """Write the gallery to `path` (default: where it was created or opened); returns when on disk."""
        target = Path(path) if path is not None else self.path
        with self._save_lock, self._lock.read():
            with self._db_lock:
                metadata = _db_bytes(self._db)
            header = {"fingerprint": self.fingerprint, "embedding_size": self.embedding_size,
                      "templates": self.templates, "model": self.model, "created": self.created,
                      "saved": _now(), "next_id": self._next_id, "faces": len(self._index),
                      "index": self._index.kind, "index_params": dict(self._index.params)}
            sections = [("metadata", lambda write: write(metadata))]
            if self._index.index is not None:
                sections.append(("index", self._index.write))
            write_gallery_file(target, header, sections)
        return target


def _db_bytes(db: sqlite3.Connection) -> bytes:
    """The in-memory metadata database as an SQLite file image."""
    if hasattr(db, "serialize"):
        return db.serialize()
    with tempfile.TemporaryDirectory() as tmp:  # Python 3.10: no serialize(); go through a file
        out = sqlite3.connect(Path(tmp) / "meta.sqlite")
        db.backup(out)
        out.close()
        return (Path(tmp) / "meta.sqlite").read_bytes()


def _db_from_bytes(data: bytes) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    if hasattr(db, "deserialize"):
        db.deserialize(data)
        return db
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "meta.sqlite").write_bytes(data)
        src = sqlite3.connect(Path(tmp) / "meta.sqlite")
        src.backup(db)
        src.close()
    return db


def _check_fingerprint(path: Path, header: dict[str, Any], fingerprint: str) -> None:
    if header.get("fingerprint") != fingerprint:
        built = f"{Path(header['model']).name}, " if header.get("model") else ""
        raise GalleryError(f"{path}: built with another model ({built}{_short(header.get('fingerprint'))}), "
                           f"not this one ({_short(fingerprint)}); use that model or rebuild the gallery")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _short(fingerprint: Optional[str]) -> str:
    return (fingerprint or "none")[:19]
