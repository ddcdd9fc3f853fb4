"""`Gallery`: enrolled faces of known people, searched by embedding (1:N, open-set).

One row per face: identity, source file, box, model fingerprint (an SQLite table), and its unit-length
fp32 embedding in a faiss index under the row's id; optionally the face's picture (a small JPEG, so
that a search result can show it). Optionally one mean template per identity (`templates=True`): the
mean of its faces' unit embeddings, searched instead of the faces.

This class is the in-memory gallery and its one-file store (`irface.gallery.store`); the PostgreSQL
store (`irface.gallery.pg.PgGallery`) keeps the same in-memory gallery current from its database.
`irface.gallery.open_gallery` / `create_gallery` pick the store from the gallery's name.

Thread safety: searches share a read lock; `add`, `remove` and the snapshot that `save` writes take the
write side, so a search sees a gallery before or after an add, never half of one. `save()` returns
once the file is on disk (written beside, renamed over, folder synced).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import re
import secrets
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from irface.errors import GalleryError, UserError
from irface.gallery.index import FaceIndex, index_params
from irface.gallery.journal import Journal, generation_of, journal_path
from irface.gallery.names import check_spellings, identity_key
from irface.gallery.store import GalleryFile, write_gallery_file

_SCHEMA = """
CREATE TABLE faces (id INTEGER PRIMARY KEY, identity TEXT NOT NULL, source TEXT NOT NULL,
                    x1 REAL, y1 REAL, x2 REAL, y2 REAL, fingerprint TEXT NOT NULL);
CREATE INDEX faces_identity ON faces(identity);
CREATE TABLE templates (identity TEXT PRIMARY KEY, count INTEGER NOT NULL, total BLOB NOT NULL);
"""
# Pictures of enrolled faces live in the gallery itself, so that they are written, and removed, with their
# face (a folder beside the gallery would keep a picture of a face whose enrolment never reached the file).
# Galleries saved before this table existed get it when opened.
_THUMBNAILS = "CREATE TABLE IF NOT EXISTS thumbnails (id INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);"
log = logging.getLogger(__name__)
_MAX_NAME = 128
# The journal is folded into the file once it is larger than the file and than this.
_COMPACT_MIN_BYTES = 4 << 20
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
    first match is not accepted is "unknown" (open-set). `face_id` and `box` are the matched face's row
    (for templates: the identity's first enrolled face), so a caller needs no second look-up.
    """

    identity: str
    similarity: float
    source: Optional[str]
    accepted: bool = True
    face_id: Optional[int] = None
    box: Optional[tuple[float, float, float, float]] = None


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


def rows_by_identity(names: Sequence[str], x: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Each identity of `names` (sorted) with its rows of `x`, in their order: how a batch's template sums
    are added (the same order in both stores, so the sums are the same bits)."""
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    sorted_names = [names[i] for i in order]
    starts = [0] + [i for i in range(1, len(order)) if sorted_names[i] != sorted_names[i - 1]] + [len(order)]
    for a, b in zip(starts[:-1], starts[1:]):
        yield sorted_names[a], x[order[a:b]]


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

    def __init__(self, path: Optional[Path], header: dict[str, Any], db: sqlite3.Connection, index: FaceIndex,
                 location: Optional[str] = None):
        self.path = Path(path) if path is not None else None
        # What messages and `info()` call the gallery: its file, or its database URL without the password.
        self.location: str = location if location is not None else str(self.path)
        db.execute(_THUMBNAILS)
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
        self._journal: Optional[Journal] = None  # a file gallery on disk: its changes since the last save
        self._file_bytes = self.path.stat().st_size if self.path is not None and self.path.is_file() else 0

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, fingerprint: str, embedding_size: int, index: str = "flat",
               templates: bool = False, model: Optional[str] = None,
               params: Optional[dict[str, Any]] = None) -> "Gallery":
        """A new, empty gallery that will be written to `path` by `save()` (nothing is written before)."""
        header, params = new_header(fingerprint, embedding_size, index, templates, model, params)
        path = Path(path)
        if path.is_dir():
            raise GalleryError(f"{path}: is a folder; a gallery is one file (e.g. {path}/faces.gallery)")
        return cls(path, header, empty_db(), FaceIndex(index, int(embedding_size), params))

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
            digest = gf.digest
        gallery = cls(path, header, db, index)
        if len(index) != header.get("faces", len(index)) or len(index) != gallery._count_faces():
            raise GalleryError(f"{path}: gallery index and metadata disagree ({len(index)} vectors, "
                               f"{gallery._count_faces()} rows); rebuild it")
        gallery._journal = Journal(journal_path(path), generation_of(digest))
        gallery._replay(gallery._journal.replay())
        return gallery

    def _replay(self, records: list[tuple[dict[str, Any], bytes]]) -> None:
        """Apply the journal's changes made since the file was saved (`irface.gallery.journal`)."""
        for header, blobs in records:
            ids = np.array(header["ids"], np.int64)
            if header["op"] == "remove":
                self._apply_remove(ids)
                continue
            n, pos = len(ids), 0
            if header.get("trained"):
                self._index.load_trained(blobs[:header["trained"]])
                pos = header["trained"]
            x = np.frombuffer(blobs, np.float32, n * self.embedding_size, pos).reshape(n, self.embedding_size)
            pos += x.nbytes
            thumbs: list[Optional[bytes]] = []
            for length in header["thumbs"]:
                thumbs.append(None if length < 0 else blobs[pos:pos + length])
                pos += max(length, 0)
            boxes = [tuple(b) if b is not None else (None,) * 4 for b in header["boxes"]]
            self._apply_add(ids, header["identities"], header["sources"], boxes, x.copy(), thumbs)

    def check_model(self, fingerprint: str) -> None:
        """Refuse (GalleryError, one line) to serve queries embedded by a model other than the gallery's."""
        _check_fingerprint(self.location, {"fingerprint": self.fingerprint, "model": self.model}, fingerprint)

    def close(self) -> None:
        """Fold the journal into the gallery file (a compaction) if this process changed the gallery; nothing
        stays open. A process that only read it writes nothing (a search may run on a read-only disk)."""
        if self._journal is not None and self._journal.appended:
            self.save()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the store behind the memory (overridden by other stores) ------------------------------
    def _sync(self) -> None:
        """Bring the in-memory gallery up to date with its store before a read (a file has no other writer)."""

    def _persist_add(self, ids: np.ndarray, names: list[str], sources: list[str], box_rows: list[tuple],
                     x: np.ndarray, thumbnails: list[Optional[bytes]]) -> None:
        """Make an enrolment durable before it is applied in memory: a journal record beside the gallery
        file (a gallery not saved yet is held in memory until `save()`). Callers hold the write lock."""
        if self._journal is None:
            return
        trained = b""
        if self._index.kind == "ivf" and self._index.index is None:
            # The first add teaches an IVF its lists: the record carries them, so replay makes the same ones.
            self._index.train(x)
            trained = self._index.trained_bytes() or b""
        header = {"op": "add", "ids": ids.tolist(), "identities": names, "sources": sources,
                  "boxes": [None if b[0] is None else list(b) for b in box_rows],
                  "thumbs": [-1 if t is None else len(t) for t in thumbnails], "trained": len(trained)}
        self._journal.append(header, trained + x.tobytes() + b"".join(t for t in thumbnails if t is not None))

    def _persist_remove(self, identity: str, ids: np.ndarray) -> None:
        """Make a removal durable before it is applied in memory (see `_persist_add`)."""
        if self._journal is not None:
            self._journal.append({"op": "remove", "identity": identity, "ids": ids.tolist()})

    def _compact_if_due(self) -> None:
        """Fold the journal into the file once it outgrows the file: each change then costs O(1) amortised."""
        journal = self._journal
        if journal is not None and self.path is not None and journal.size() > max(_COMPACT_MIN_BYTES, self._file_bytes):
            try:
                self.save()
            except UserError as e:  # the change itself is in the journal: answer it, compact another time
                log.warning("%s: compaction failed, the journal keeps the changes (%s)", self.path, e)

    # ---- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._sync()
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
        # identity_key -> the spellings with faces (one per person for names enrolled since the rule).
        self._spellings: dict[str, set[str]] = {}
        self._identity_of = np.full(max(self._next_id, 1), -1, np.int64)
        for face_id, identity in rows:
            self._identity_of[face_id] = self._code_for(identity)
        for who in self._names:  # once per name, not per face
            self._spellings.setdefault(identity_key(who), set()).add(who)

    def _code_for(self, identity: str) -> int:
        code = self._code.get(identity)
        if code is None:
            code = self._code[identity] = len(self._names)
            self._names.append(identity)
        return code

    def identities(self) -> list[str]:
        """Enrolled identities, sorted."""
        self._sync()
        with self._lock.read(), self._db_lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT identity FROM faces ORDER BY identity")]

    def faces(self, identity: Optional[str] = None) -> list[dict[str, Any]]:
        """The rows of the metadata table (of one identity if given): id, identity, source, box."""
        return self._face_rows(*(("", ()) if identity is None else ("WHERE identity = ?", (identity,))))

    def face(self, face_id: int) -> Optional[dict[str, Any]]:
        """One face's row (as `faces()` gives it), or None when no such face is enrolled."""
        rows = self._face_rows("WHERE id = ?", (int(face_id),))
        return rows[0] if rows else None

    def _face_rows(self, where: str, args: tuple) -> list[dict[str, Any]]:
        self._sync()
        with self._lock.read(), self._db_lock:
            rows = self._db.execute(f"SELECT id, identity, source, x1, y1, x2, y2 FROM faces {where} ORDER BY id",
                                    args).fetchall()
        return [{"id": r[0], "identity": r[1], "source": r[2],
                 "box": None if r[3] is None else [r[3], r[4], r[5], r[6]]} for r in rows]

    def thumbnail(self, face_id: int) -> Optional[bytes]:
        """The picture (JPEG) stored with an enrolled face, or None (no such face, or none stored)."""
        with self._lock.read(), self._db_lock:
            r = self._db.execute("SELECT jpeg FROM thumbnails WHERE id = ?", (int(face_id),)).fetchone()
        return None if r is None else bytes(r[0])

    def info(self) -> dict[str, Any]:
        self._sync()
        with self._lock.read():
            with self._db_lock:
                n_ids = self._db.execute("SELECT count(DISTINCT identity) FROM faces").fetchone()[0]
            return {"path": self.location, "faces": len(self._index), "identities": int(n_ids),
                    "embedding_size": self.embedding_size, "index": self._index.kind,
                    "index_params": dict(self._index.params), "templates": self.templates,
                    "fingerprint": self.fingerprint, "model": self.model, "created": self.created,
                    "store": self._store_kind(),
                    "file_bytes": self.path.stat().st_size if self.path is not None and self.path.is_file() else None}

    def _store_kind(self) -> str:
        return "file"

    # ---- changes ------------------------------------------------------------------------------
    def add(self, identity: str, embeddings: Any, sources: Sequence[str], boxes: Optional[Any] = None,
            thumbnails: Optional[Sequence[Optional[bytes]]] = None) -> list[int]:
        """Enrol faces of one identity (embeddings (N, E), one source file each); returns their row ids.

        The embeddings are L2-normalised here. Durable on return for a gallery in a database or on disk
        (its journal); a new gallery not saved yet is written by `save()`.
        """
        validate_identity(identity)
        return self.add_many([identity] * len(sources), embeddings, sources, boxes, thumbnails)

    def add_many(self, identities: Sequence[str], embeddings: Any, sources: Sequence[str],
                 boxes: Optional[Any] = None, thumbnails: Optional[Sequence[Optional[bytes]]] = None) -> list[int]:
        """Enrol faces of many identities at once (one identity and source per row): one index add.

        `thumbnails`: a small JPEG per row (or None), kept with the face and removed with it.
        """
        batch = self._prepare_add(identities, embeddings, sources, boxes, thumbnails)
        if batch is None:
            return []
        return self._commit_add(*batch)

    def _prepare_add(self, identities: Sequence[str], embeddings: Any, sources: Sequence[str],
                     boxes: Optional[Any], thumbnails: Optional[Sequence[Optional[bytes]]]) -> Optional[tuple]:
        """The checked rows of an enrolment: (names, unit embeddings, sources, boxes, thumbnails), or None if empty."""
        for name in set(identities):
            validate_identity(name)
        what = f"faces of '{identities[0]}'" if len(set(identities)) == 1 else "faces"
        if not len(identities) and not len(sources):
            return None
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
        thumbs = list(thumbnails) if thumbnails is not None else [None] * n
        if len(thumbs) != n:
            raise GalleryError(f"{what}: {n} embeddings but {len(thumbs)} thumbnails")
        if n == 0:
            return None
        return list(identities), x, sources, box_rows, thumbs

    def _commit_add(self, names: list[str], x: np.ndarray, sources: list[str], box_rows: list[tuple],
                    thumbs: list[Optional[bytes]]) -> list[int]:
        with self._lock.write():
            check_spellings(names, self._spellings)
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            self._persist_add(ids, names, sources, box_rows, x, thumbs)
            self._apply_add(ids, names, sources, box_rows, x, thumbs)
        self._compact_if_due()
        return ids.tolist()

    def _apply_add(self, ids: np.ndarray, names: list[str], sources: list[str], box_rows: list[tuple],
                   x: np.ndarray, thumbs: list[Optional[bytes]], sum_templates: bool = True) -> None:
        """Put rows in memory (index, table, identity codes); callers hold the write lock."""
        self._index.add(ids, x)
        with self._db_lock, self._db:
            self._db.executemany(
                "INSERT INTO faces (id, identity, source, x1, y1, x2, y2, fingerprint) VALUES (?,?,?,?,?,?,?,?)",
                [(int(i), who, s, *bx, self.fingerprint) for i, who, s, bx in zip(ids, names, sources, box_rows)])
            self._db.executemany("INSERT INTO thumbnails (id, jpeg) VALUES (?, ?)",
                                 [(int(i), t) for i, t in zip(ids, thumbs) if t is not None])
            if self.templates and sum_templates:
                self._add_to_templates(names, x)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        if len(self._identity_of) < self._next_id:
            grown = np.full(max(self._next_id, 2 * len(self._identity_of)), -1, np.int64)
            grown[:len(self._identity_of)] = self._identity_of
            self._identity_of = grown
        self._identity_of[ids] = [self._code_for(who) for who in names]
        for who in set(names):
            self._spellings.setdefault(identity_key(who), set()).add(who)
        self._template_cache = None

    def _add_to_templates(self, names: list[str], x: np.ndarray) -> None:
        for who, rows in rows_by_identity(names, x):
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
        """Remove every face of `identity` (and their pictures); returns how many there were (0 if none)."""
        validate_identity(identity)
        return self._commit_remove(identity)

    def _commit_remove(self, identity: str) -> int:
        with self._lock.write():
            ids = self._ids_of(identity)
            if not len(ids):
                return 0
            self._persist_remove(identity, ids)
            self._apply_remove(ids)
        self._compact_if_due()
        return len(ids)

    def _ids_of(self, identity: str) -> np.ndarray:
        with self._db_lock:
            return np.array([r[0] for r in self._db.execute("SELECT id FROM faces WHERE identity = ?", (identity,))],
                            np.int64)

    def _apply_remove(self, ids: np.ndarray) -> None:
        """Drop faces from memory, with their pictures and the templates of identities left without a face;
        callers hold the write lock."""
        ids = ids[(ids >= 0) & (ids < len(self._identity_of))]
        ids = ids[self._identity_of[ids] >= 0]  # faces this memory holds
        if not len(ids):
            return
        names = {self._names[c] for c in set(self._identity_of[ids].tolist())}
        self._index.remove(ids)
        with self._db_lock, self._db:
            # In chunks: SQLite limits the parameters of one statement.
            for a in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[a:a + 500]]
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM faces WHERE id IN ({marks})", chunk)
                self._db.execute(f"DELETE FROM thumbnails WHERE id IN ({marks})", chunk)
            for who in names:
                if self._db.execute("SELECT 1 FROM faces WHERE identity = ? LIMIT 1", (who,)).fetchone() is None:
                    self._db.execute("DELETE FROM templates WHERE identity = ?", (who,))
                    self._spellings.get(identity_key(who), set()).discard(who)
        self._identity_of[ids] = -1
        self._template_cache = None

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
        self._sync()
        with self._lock.read():
            if by == "templates":
                ranked = self._search_templates(q, top_k)
            else:
                ranked = self._search_faces(q, top_k)
            wanted = {fid for row in ranked for _, _, fid in row if fid is not None}
            rows = self._rows(wanted)

        def match(name: str, sim: float, fid: Optional[int]) -> Match:
            source, box = rows[fid] if fid in rows else (None, None)
            return Match(name, sim, source, threshold is None or sim > threshold, fid, box)

        return [[match(*hit) for hit in row] for row in ranked]

    def nearest(self, embeddings: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The raw index answer: (similarities, face ids), each (Q, k), face id -1 past the gallery's end."""
        q = _unit_rows(embeddings, self.embedding_size, "query")
        self._sync()
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

    def _rows(self, ids: set[int]) -> dict[int, tuple[str, Optional[tuple[float, float, float, float]]]]:
        """face id -> (source, box or None) of the faces a search returns."""
        if not ids:
            return {}
        with self._db_lock:
            marks = ",".join("?" * len(ids))
            found = self._db.execute(f"SELECT id, source, x1, y1, x2, y2 FROM faces WHERE id IN ({marks})",
                                     tuple(int(i) for i in ids)).fetchall()
        return {r[0]: (r[1], None if r[2] is None else (r[2], r[3], r[4], r[5])) for r in found}

    # ---- whole-gallery export and import (`irface gallery copy`) -------------------------------
    def export_rows(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, list[tuple], np.ndarray, list]]:
        """Every face in id order, in chunks: (ids, rows (identity, source, x1, y1, x2, y2, fingerprint),
        unit embeddings as stored (bit for bit), thumbnails (JPEG or None))."""
        self._sync()
        with self._lock.read():
            with self._db_lock:
                all_ids = [r[0] for r in self._db.execute("SELECT id FROM faces ORDER BY id")]
            for a in range(0, len(all_ids), chunk):
                ids = np.array(all_ids[a:a + chunk], np.int64)
                lo, hi = int(ids[0]), int(ids[-1])
                with self._db_lock:
                    rows = self._db.execute("SELECT identity, source, x1, y1, x2, y2, fingerprint FROM faces "
                                            "WHERE id BETWEEN ? AND ? ORDER BY id", (lo, hi)).fetchall()
                thumbs = self._thumbnails_between(lo, hi)
                yield ids, rows, self._index.vectors(ids), [thumbs.get(int(i)) for i in ids]

    def _thumbnails_between(self, lo: int, hi: int) -> dict[int, bytes]:
        """face id -> picture, for the faces with ids in [lo, hi] that have one."""
        with self._db_lock:
            return {r[0]: bytes(r[1]) for r in
                    self._db.execute("SELECT id, jpeg FROM thumbnails WHERE id BETWEEN ? AND ?", (lo, hi))}

    def set_template_totals(self, totals: Mapping[str, Optional[tuple[int, bytes]]]) -> None:
        """Replace the templates of these identities (None: drop it) with stored sums; callers hold the write lock."""
        with self._db_lock, self._db:
            for who, value in totals.items():
                if value is None:
                    self._db.execute("DELETE FROM templates WHERE identity = ?", (who,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO templates VALUES (?, ?, ?)", (who, value[0], value[1]))
        self._template_cache = None

    def import_all(self, source: "Gallery") -> None:
        """Fill this new, empty gallery with every face, picture and template of `source`, exactly (same ids,
        same embeddings bit for bit, same IVF lists); a file gallery is then written by `save()`."""
        settings = source.settings()
        with self._lock.write():
            if settings["trained"] is not None:
                self._index.load_trained(settings["trained"])
            for ids, rows, x, thumbs in source.export_rows():
                self._apply_add(ids, [r[0] for r in rows], [r[1] for r in rows], [tuple(r[2:6]) for r in rows],
                                x, thumbs, sum_templates=False)
            self.set_template_totals(source.template_totals())
            self._next_id = max(self._next_id, settings["next_id"])

    def identity_counts(self) -> dict[str, int]:
        """identity -> how many faces it has."""
        self._sync()
        with self._lock.read(), self._db_lock:
            return dict(self._db.execute("SELECT identity, count(*) FROM faces GROUP BY identity").fetchall())

    def template_totals(self) -> dict[str, tuple[int, bytes]]:
        """identity -> (faces, float64 sum of its unit embeddings as bytes): the templates, exactly."""
        with self._lock.read(), self._db_lock:
            return {r[0]: (int(r[1]), bytes(r[2])) for r in self._db.execute("SELECT identity, count, total FROM templates")}

    def settings(self) -> dict[str, Any]:
        """What a copy of this gallery needs to be the same gallery: model, sizes, index, its trained lists."""
        with self._lock.read():
            return {"fingerprint": self.fingerprint, "embedding_size": self.embedding_size,
                    "templates": self.templates, "model": self.model, "created": self.created,
                    "index": self._index.kind, "params": dict(self._index.params), "next_id": self._next_id,
                    "trained": self._index.trained_bytes()}

    # ---- disk ---------------------------------------------------------------------------------
    def save(self, path: Optional[str | Path] = None) -> Path:
        """Write the gallery to `path` (default: where it was created or opened); returns when on disk."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise GalleryError("save(): this gallery has no file; give a path")
        with self._save_lock, self._lock.read():
            with self._db_lock:
                metadata = _db_bytes(self._db)
            # `generation` makes every save's bytes, hence its digest (the journal's key), new.
            header = {"fingerprint": self.fingerprint, "embedding_size": self.embedding_size,
                      "templates": self.templates, "model": self.model, "created": self.created,
                      "saved": _now(), "next_id": self._next_id, "faces": len(self._index),
                      "index": self._index.kind, "index_params": dict(self._index.params),
                      "generation": secrets.token_hex(8)}
            sections = [("metadata", lambda write: write(metadata))]
            if self._index.index is not None:
                sections.append(("index", self._index.write))
            digest = write_gallery_file(target, header, sections)
            if self.path is not None and target.resolve() == self.path.resolve():
                # The file now holds every change: an empty journal for its new generation (a leftover
                # journal of an older gallery at this path is emptied too).
                if self._journal is None:
                    self._journal = Journal(journal_path(target), generation_of(digest))
                self._journal.reset(generation_of(digest))
                self._file_bytes = target.stat().st_size
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


def new_header(fingerprint: str, embedding_size: int, index: str, templates: bool, model: Optional[str],
               params: Optional[dict[str, Any]], created: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new gallery's header and index parameters (either store), its arguments checked."""
    if not isinstance(fingerprint, str) or not fingerprint:
        raise GalleryError("a gallery needs the model's fingerprint (irface.gallery.model_fingerprint)")
    if int(embedding_size) < 1:
        raise GalleryError(f"embedding size must be positive, got {embedding_size}")
    header = {"fingerprint": fingerprint, "embedding_size": int(embedding_size), "templates": bool(templates),
              "model": model, "created": created or _now(), "next_id": 0}
    return header, index_params(index, params)


def empty_db() -> sqlite3.Connection:
    """The in-memory metadata tables of a gallery, empty (either store keeps its rows there)."""
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(_SCHEMA)
    return db


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


def _check_fingerprint(path: Path | str, header: dict[str, Any], fingerprint: str) -> None:
    if header.get("fingerprint") != fingerprint:
        built = f"{Path(header['model']).name}, " if header.get("model") else ""
        raise GalleryError(f"{path}: built with another model ({built}{_short(header.get('fingerprint'))}), "
                           f"not this one ({_short(fingerprint)}); use that model or rebuild the gallery")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _short(fingerprint: Optional[str]) -> str:
    return (fingerprint or "none")[:19]
