"""A gallery in PostgreSQL: the database is the truth, each process keeps the in-memory gallery current.

Many processes (server workers, `irface gallery` commands) share one gallery. Each holds the same
in-memory gallery as a file gallery (faiss index + metadata table), loaded from the database when
opened, and applies the **change log** before every read: one query for the changes after the last one
it applied (`irface_changes`, seq > last seen). So once an enrolment or removal has been answered (its
transaction committed) by any process, every later search in any process sees it.

The log is gap-safe: every change takes one transaction-scoped advisory lock (`pg_advisory_xact_lock`)
before it numbers itself, so changes commit in the order of their numbers; a reader never sees seq 11
committed while seq 10 is still to come (with a bare sequence it could, and would skip 10 for ever).
The same lock gives concurrent changes one total order: two processes enrolling the same identity at
once both add their faces (an enrolment appends); a removal racing an enrolment removes the faces
enrolled before it in that order and none after (the identity then holds only the later faces).

One transaction per change (rows, embeddings, pictures, the log entry): its cost does not grow with
the gallery. Schema version `SCHEMA_VERSION`, made on first write; a database made by another schema
version, another model, or holding other tables is refused in one line. Passwords come from the URL,
PGPASSWORD or ~/.pgpass (libpq) and never appear in a message: URLs are shown redacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from irface.errors import GalleryError, GalleryUnavailable, import_extra
from irface.gallery.gallery import Gallery, empty_db, new_header, rows_by_identity
from irface.gallery.index import FaceIndex
from irface.gallery.names import identity_key, name_taken

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")
SCHEMA_VERSION = 1
# The advisory lock every change takes (any 64-bit number; advisory locks are per database).
_CHANGE_LOCK = 0x1F_ACE_6A11
_LOAD_CHUNK = 50_000
_PG_SCHEMA = """
CREATE TABLE irface_meta (key text PRIMARY KEY, value text, blob bytea);
CREATE TABLE irface_identities (name text PRIMARY KEY, key text NOT NULL, faces integer NOT NULL, total bytea);
CREATE INDEX irface_identities_key ON irface_identities(key);
CREATE TABLE irface_faces (id bigint PRIMARY KEY, identity text NOT NULL REFERENCES irface_identities(name),
                           source text NOT NULL, x1 float8, y1 float8, x2 float8, y2 float8,
                           fingerprint text NOT NULL, embedding bytea NOT NULL);
CREATE INDEX irface_faces_identity ON irface_faces(identity);
CREATE TABLE irface_thumbnails (face_id bigint PRIMARY KEY REFERENCES irface_faces(id) ON DELETE CASCADE,
                                jpeg bytea NOT NULL);
CREATE TABLE irface_changes (seq bigint PRIMARY KEY, op text NOT NULL CHECK (op IN ('add', 'remove')),
                             identity text, face_ids bigint[] NOT NULL, at timestamptz NOT NULL DEFAULT now());
"""


class _CreatedMeanwhile(GalleryError):
    """Two processes made a gallery in the same empty database at once; the later one opens the other's."""


def is_url(spec: Any) -> bool:
    """Whether a gallery argument names a PostgreSQL database rather than a file."""
    return isinstance(spec, str) and spec.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter): safe to print."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, host = netloc.rsplit("@", 1)
            if ":" in user:
                user = user.split(":", 1)[0] + ":***"
            netloc = f"{user}@{host}"
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="/")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "postgresql://(unparsable URL)"


def _psycopg() -> Any:
    return import_extra("psycopg", "a PostgreSQL gallery", "postgres", GalleryError)


def _connect(url: str, where: str) -> Any:
    psycopg = _psycopg()
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        # The parser's message quotes the URL, password and all: say what is wrong without it.
        raise GalleryError(f"{where}: not a valid PostgreSQL URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE "
                           "or postgresql://USER@/DATABASE?host=/socket/folder)") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="irface")
    except psycopg.OperationalError as e:
        raise GalleryUnavailable(f"{where}: cannot connect to the database ({_libpq_reason(e)})") from None


def _libpq_reason(e: BaseException) -> str:
    # libpq's messages name host, port, user and database, never the password; keep the last, telling line.
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text.removeprefix("FATAL:").strip().rstrip(".")


class PgGallery(Gallery):
    """The in-memory gallery (`Gallery`) over a PostgreSQL database; changes are committed as they are made."""

    def __init__(self, url: str, header: dict[str, Any], db: sqlite3.Connection, index: FaceIndex,
                 conn: Any, exists: bool):
        super().__init__(None, header, db, index, location=redact(url))
        self._url = url
        self._conn = conn
        self._conn_lock = threading.RLock()  # one connection per gallery, used from many threads
        self._sync_lock = threading.Lock()
        self._seen = int(header.get("seen", 0))
        self._exists = exists  # the schema is in the database (a created gallery writes it with its first change)
        self._params_for_create = dict(index.params)

    def _store_kind(self) -> str:
        return "postgresql"

    # ---- connection -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        """The connection, reconnected if it was lost; a lost server is GalleryUnavailable (HTTP 503)."""
        psycopg = _psycopg()
        with self._conn_lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self.close()  # the lock is re-entrant
                self._conn = _connect(self._url, self.location)
            try:
                yield self._conn
            except psycopg.OperationalError as e:
                self.close()
                raise GalleryUnavailable(f"{self.location}: the database is unavailable ({_libpq_reason(e)}); "
                                         "try again") from None

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # ---- open / create --------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, *, fingerprint: Optional[str] = None,  # type: ignore[override]
             create: Optional[dict[str, Any]] = None, load: bool = True) -> "PgGallery":
        """Load the gallery in this database; with `create` (the settings of `Gallery.create`), an empty
        database gets a new gallery instead of a refusal. `load=False`: check it (schema, model) without
        reading its faces (the result is then only good for `close()`)."""
        where = redact(url)
        conn = _connect(url, where)
        try:
            state = _schema_state(conn)
            if state == "empty" and create is not None:
                gallery = cls._new(url, conn, **create)
                try:
                    gallery.save()  # its tables, now: every other process then finds a gallery here
                    log.info("created an empty gallery in %s", where)
                    return gallery
                except _CreatedMeanwhile:
                    state = _schema_state(conn)  # another process made it first (rolled back): open that one
            if state == "empty":
                raise GalleryError(f"{where}: holds no irface gallery (an empty database); build one with "
                                   f"irface gallery build ... --output URL")
            if state != "irface":
                raise GalleryError(f"{where}: holds no irface gallery but other tables ({state}); "
                                   "give an empty database or one irface made")
            gallery = cls._load(url, conn, where, faces=load)
        except BaseException:
            conn.close()
            raise
        if fingerprint is not None:
            try:
                gallery.check_model(fingerprint)
            except GalleryError:
                gallery.close()
                raise
        return gallery

    @classmethod
    def create(cls, url: str, *, fingerprint: str, embedding_size: int, index: str = "flat",  # type: ignore[override]
               templates: bool = False, model: Optional[str] = None,
               params: Optional[dict[str, Any]] = None) -> "PgGallery":
        """A new, empty gallery in an empty database; its tables are made with its first change (or `save()`)."""
        where = redact(url)
        conn = _connect(url, where)
        try:
            state = _schema_state(conn)
            if state == "irface":
                faces = conn.execute("SELECT count(*) FROM irface_faces").fetchone()[0]
                raise GalleryError(f"{where}: holds an irface gallery already ({faces} faces); add to it with "
                                   "irface gallery add, or give an empty database")
            if state != "empty":
                raise GalleryError(f"{where}: holds other tables ({state}); give an empty database")
            return cls._new(url, conn, fingerprint=fingerprint, embedding_size=embedding_size, index=index,
                            templates=templates, model=model, params=params)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _new(cls, url: str, conn: Any, *, fingerprint: str, embedding_size: int, index: str = "flat",
             templates: bool = False, model: Optional[str] = None, params: Optional[dict[str, Any]] = None,
             created: Optional[str] = None) -> "PgGallery":
        header, params = new_header(fingerprint, embedding_size, index, templates, model, params, created)
        return cls(url, header, empty_db(), FaceIndex(index, int(embedding_size), params), conn, exists=False)

    @classmethod
    def _load(cls, url: str, conn: Any, where: str, faces: bool = True) -> "PgGallery":
        # One snapshot: the rows and the log position they hold agree.
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            meta = {k: (v, b) for k, v, b in conn.execute("SELECT key, value, blob FROM irface_meta")}
            version = meta.get("schema_version", (None, None))[0]
            if version != str(SCHEMA_VERSION):
                raise GalleryError(f"{where}: gallery schema version {version}, this irface reads {SCHEMA_VERSION}; "
                                   "use the irface that made it, or copy the gallery with it")
            try:
                header = {k: meta[k][0] for k in ("fingerprint", "embedding_size", "model", "created", "index")}
                header["templates"] = meta["templates"][0] == "true"
                header["next_id"] = int(meta["next_id"][0])
                params = json.loads(meta["index_params"][0])
            except (KeyError, TypeError, ValueError):
                raise GalleryError(f"{where}: the gallery's settings (irface_meta) are incomplete; "
                                   "rebuild it or restore a backup") from None
            header["seen"] = conn.execute("SELECT coalesce(max(seq), 0) FROM irface_changes").fetchone()[0]
            dim = int(header["embedding_size"])
            index = FaceIndex(header["index"], dim, params)
            trained = meta.get("ivf_trained", (None, None))[1]
            if trained is not None:
                index.load_trained(bytes(trained))
            gallery = cls(url, header, empty_db(), index, conn, exists=True)
            if not faces:
                return gallery
            with conn.cursor(name="irface_load", binary=True) as cur:
                cur.itersize = _LOAD_CHUNK
                cur.execute("SELECT id, identity, source, x1, y1, x2, y2, embedding FROM irface_faces ORDER BY id")
                while rows := cur.fetchmany(_LOAD_CHUNK):
                    gallery._apply_rows(rows)
            if gallery.templates:
                totals = {r[0]: (int(r[1]), bytes(r[2])) for r in
                          conn.execute("SELECT name, faces, total FROM irface_identities WHERE total IS NOT NULL")}
                gallery.set_template_totals(totals)
        gallery._next_id = max(gallery._next_id, int(header["next_id"]))
        return gallery

    def _apply_rows(self, rows: list[tuple]) -> None:
        """Rows of irface_faces (id, identity, source, x1..y2, embedding) into memory; templates come separately.
        Callers hold the write lock (or own the gallery alone, while loading)."""
        ids = np.array([r[0] for r in rows], np.int64)
        x = np.frombuffer(b"".join(bytes(r[7]) for r in rows), np.float32).reshape(len(rows), self.embedding_size)
        self._apply_add(ids, [r[1] for r in rows], [r[2] for r in rows], [tuple(r[3:7]) for r in rows],
                        np.ascontiguousarray(x), [None] * len(rows), sum_templates=False)

    # ---- writing ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _change(self) -> Iterator[Any]:
        """One change: a transaction holding the change lock, the schema made if this is the first one."""
        with self._session() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CHANGE_LOCK,))
            if not self._exists:
                self._write_schema(conn)
            yield conn
        self._exists = True

    def _write_schema(self, conn: Any) -> None:
        state = _schema_state(conn)
        if state == "irface":  # another process made it first (two servers starting on an empty database)
            raise _CreatedMeanwhile(f"{self.location}: another process created a gallery here meanwhile; "
                                    "open it again")
        if state != "empty":
            raise GalleryError(f"{self.location}: holds other tables ({state}); give an empty database")
        conn.execute(_PG_SCHEMA)
        meta = {"schema_version": str(SCHEMA_VERSION), "fingerprint": self.fingerprint,
                "embedding_size": str(self.embedding_size), "model": self.model, "created": self.created,
                "index": self._index.kind, "index_params": json.dumps(self._params_for_create),
                "templates": "true" if self.templates else "false", "next_id": str(self._next_id)}
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO irface_meta (key, value) VALUES (%s, %s)", list(meta.items()))
        trained = self._index.trained_bytes()
        if trained is not None:
            conn.execute("INSERT INTO irface_meta (key, blob) VALUES ('ivf_trained', %s)", (trained,))

    def save(self, path: Any = None) -> Any:
        """Every change is committed when made; this only makes the tables of a new, empty gallery."""
        if path is not None:
            raise GalleryError(f"{self.location}: a PostgreSQL gallery is saved as it changes; "
                               "to write a file of it use irface gallery copy")
        if not self._exists:
            with self._change():
                pass
        return self.location

    def train(self, sample: Any) -> None:
        """IVF: learn the lists (kept in the database, so every process searches the same lists)."""
        super().train(sample)
        self._share_trained()

    def _share_trained(self) -> None:
        """IVF: the database's lists if it has them, else this process's (stored for every other one)."""
        if self._index.kind != "ivf":
            return
        shared = None
        with self._change() as conn:
            row = conn.execute("SELECT blob FROM irface_meta WHERE key = 'ivf_trained'").fetchone()
            if row is not None:
                shared = bytes(row[0])
            else:
                trained = self._index.trained_bytes()
                if trained is not None:
                    conn.execute("INSERT INTO irface_meta (key, blob) VALUES ('ivf_trained', %s)", (trained,))
                    conn.execute("UPDATE irface_meta SET value = %s WHERE key = 'index_params'",
                                 (json.dumps(self._index.params),))
        if shared is not None and self._index.index is None:
            # Taken after the transaction: never wait for the gallery's lock while holding the connection.
            with self._lock.write():
                self._index.load_trained(shared)

    def _commit_add(self, names: list[str], x: np.ndarray, sources: list[str], box_rows: list[tuple],
                    thumbs: list[Optional[bytes]]) -> list[int]:
        if self._index.kind == "ivf" and self._index.index is None:
            # An untrained IVF learns its lists from its first batch, as a file gallery does, and shares them.
            self._sync()
            if self._index.index is None:
                with self._lock.write():
                    self._index.train(x)
                self._share_trained()
        n = len(x)
        with self._change() as conn:
            next_id = int(conn.execute("SELECT value FROM irface_meta WHERE key = 'next_id'").fetchone()[0])
            ids = np.arange(next_id, next_id + n, dtype=np.int64)
            conn.execute("UPDATE irface_meta SET value = %s WHERE key = 'next_id'", (str(next_id + n),))
            totals = self._write_identities(conn, names, x)
            with conn.cursor() as cur:
                _copy_faces(cur, ((int(i), who, src, *box, self.fingerprint, vec.tobytes())
                                  for i, who, src, box, vec in zip(ids, names, sources, box_rows, x)))
                pictures = [(int(i), t) for i, t in zip(ids, thumbs) if t is not None]
                if pictures:
                    cur.executemany("INSERT INTO irface_thumbnails (face_id, jpeg) VALUES (%s, %s)", pictures)
            seq = conn.execute("INSERT INTO irface_changes (seq, op, identity, face_ids) "
                               "SELECT coalesce(max(seq), 0) + 1, 'add', %s, %s FROM irface_changes RETURNING seq",
                               (names[0] if len(set(names)) == 1 else None, ids.tolist())).fetchone()[0]

        def apply() -> None:
            self._apply_add(ids, names, sources, box_rows, x, [None] * n, sum_templates=False)
            if self.templates:
                self.set_template_totals(totals)

        self._after_commit(seq, apply)
        return ids.tolist()

    def _after_commit(self, seq: int, apply: Any) -> None:
        """This process's memory after its own committed change: applied from what it just wrote when the
        change is the next in the log (no read back), else by catching up on the log."""
        with self._sync_lock:
            if seq == self._seen + 1:
                with self._lock.write():
                    apply()
                    self._seen = seq
                return
        # A database lost just now must not turn a committed change into an error: every later read
        # catches up first (or fails itself).
        try:
            self._sync()
        except GalleryUnavailable as e:
            log.warning("%s", e)

    def _write_identities(self, conn: Any, names: list[str], x: np.ndarray) -> dict[str, tuple[int, bytes]]:
        """Each identity's face count, and with templates its float64 sum, updated as the file gallery sums;
        returns the new (count, sum) of each (templates only)."""
        out = {}
        for who, rows in rows_by_identity(names, x):
            row = conn.execute("SELECT faces, total FROM irface_identities WHERE name = %s", (who,)).fetchone()
            if row is None:
                # One spelling per person, checked under the change lock: another worker's "Bob" is seen here.
                other = conn.execute("SELECT name FROM irface_identities WHERE key = %s AND name <> %s ORDER BY name "
                                     "LIMIT 1", (identity_key(who), who)).fetchone()
                if other is not None:
                    raise name_taken(who, other[0])
            total = None
            if self.templates:
                old = np.zeros(self.embedding_size) if row is None or row[1] is None else \
                    np.frombuffer(bytes(row[1]), np.float64)
                total = (old + rows.sum(0, dtype=np.float64)).tobytes()
            conn.execute("INSERT INTO irface_identities (name, key, faces, total) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET faces = irface_identities.faces + excluded.faces, "
                         "total = excluded.total", (who, identity_key(who), len(rows), total))
            if total is not None:
                out[who] = ((0 if row is None else row[0]) + len(rows), total)
        return out

    def _commit_remove(self, identity: str) -> int:
        with self._change() as conn:
            ids = [r[0] for r in conn.execute("DELETE FROM irface_faces WHERE identity = %s RETURNING id",
                                              (identity,))]
            if not ids:
                return 0
            conn.execute("DELETE FROM irface_identities WHERE name = %s", (identity,))
            seq = conn.execute("INSERT INTO irface_changes (seq, op, identity, face_ids) "
                               "SELECT coalesce(max(seq), 0) + 1, 'remove', %s, %s FROM irface_changes RETURNING seq",
                               (identity, ids)).fetchone()[0]

        def apply() -> None:
            self._apply_remove(np.array(ids, np.int64))
            if self.templates:
                self.set_template_totals({identity: None})

        self._after_commit(seq, apply)
        return len(ids)

    # ---- reading: catch up on the change log ----------------------------------------------------------
    def _sync(self) -> None:
        """Apply every change committed since the last one applied (one query when there is none)."""
        if not self._exists:
            return
        with self._sync_lock:
            with self._session() as conn:
                # The usual answer, "nothing new", in one round trip (a transaction would take four).
                if not conn.execute("SELECT EXISTS (SELECT 1 FROM irface_changes WHERE seq > %s)",
                                    (self._seen,)).fetchone()[0]:
                    return
            with self._session() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                changes = conn.execute("SELECT seq, op, identity, face_ids FROM irface_changes WHERE seq > %s "
                                       "ORDER BY seq", (self._seen,)).fetchall()
                if not changes:
                    return
                added = [i for _, op, _, ids in changes if op == "add" for i in ids]
                removed = np.array([i for _, op, _, ids in changes if op == "remove" for i in ids], np.int64)
                rows = conn.execute("SELECT id, identity, source, x1, y1, x2, y2, embedding FROM irface_faces "
                                    "WHERE id = ANY(%s) ORDER BY id", (added,), binary=True).fetchall()
                trained = None
                if self._index.kind == "ivf" and self._index.index is None:
                    found = conn.execute("SELECT blob FROM irface_meta WHERE key = 'ivf_trained'").fetchone()
                    trained = None if found is None else bytes(found[0])
                totals: dict[str, Optional[tuple[int, bytes]]] = {}
                if self.templates:
                    touched = {r[1] for r in rows} | {who for _, op, who, _ in changes if op == "remove" and who}
                    totals = dict.fromkeys(touched)
                    totals.update({r[0]: (int(r[1]), bytes(r[2])) for r in conn.execute(
                        "SELECT name, faces, total FROM irface_identities WHERE name = ANY(%s)", (list(touched),))})
            with self._lock.write():
                if trained is not None:
                    self._index.load_trained(trained)
                self._apply_remove(removed)
                # A face added and removed since the last catch-up is not in `rows`; one already here is skipped.
                fresh = [r for r in rows if not self._holds(r[0])]
                if fresh:
                    self._apply_rows(fresh)
                if totals:
                    self.set_template_totals(totals)
                self._seen = changes[-1][0]

    def _holds(self, face_id: int) -> bool:
        return 0 <= face_id < len(self._identity_of) and self._identity_of[face_id] >= 0

    def thumbnail(self, face_id: int) -> Optional[bytes]:
        """The picture stored with a face, read from the database (any worker may have enrolled it)."""
        if not self._exists:
            return None
        with self._session() as conn:
            row = conn.execute("SELECT jpeg FROM irface_thumbnails WHERE face_id = %s", (int(face_id),)).fetchone()
        return None if row is None else bytes(row[0])

    def _thumbnails_between(self, lo: int, hi: int) -> dict[int, bytes]:
        if not self._exists:
            return {}
        with self._session() as conn:
            return {r[0]: bytes(r[1]) for r in conn.execute(
                "SELECT face_id, jpeg FROM irface_thumbnails WHERE face_id BETWEEN %s AND %s", (lo, hi))}

    # ---- `irface gallery copy` into a database ------------------------------------------------------
    def import_all(self, source: Gallery) -> None:
        """Fill this new, empty gallery with every face, picture and template of `source`, in one transaction."""
        settings = source.settings()
        totals = source.template_totals()
        with self._change() as conn:
            with conn.cursor() as cur:
                with cur.copy("COPY irface_identities (name, key, faces, total) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "int4", "bytea"])
                    for who, n in source.identity_counts().items():
                        copy.write_row((who, identity_key(who), n, totals.get(who, (0, None))[1]))
                for ids, rows, x, thumbs in source.export_rows():
                    _copy_faces(cur, ((int(i), *r, vec.tobytes()) for i, r, vec in zip(ids, rows, x)))
                    pictures = [(int(i), t) for i, t in zip(ids, thumbs) if t is not None]
                    if pictures:
                        cur.executemany("INSERT INTO irface_thumbnails (face_id, jpeg) VALUES (%s, %s)", pictures)
            conn.execute("UPDATE irface_meta SET value = %s WHERE key = 'next_id'", (str(settings["next_id"]),))
            conn.execute("UPDATE irface_meta SET value = %s WHERE key = 'index_params'", (json.dumps(settings["params"]),))
            if settings["trained"] is not None:
                conn.execute("DELETE FROM irface_meta WHERE key = 'ivf_trained'")
                conn.execute("INSERT INTO irface_meta (key, blob) VALUES ('ivf_trained', %s)", (settings["trained"],))
        super().import_all(source)  # and this process's memory (the log has nothing for it: no change was logged)


def _copy_faces(cur: Any, rows: Iterator[tuple]) -> None:
    """Rows (id, identity, source, x1, y1, x2, y2, fingerprint, embedding bytes) into irface_faces: one
    binary COPY (bytea as is: text COPY would escape every embedding byte)."""
    with cur.copy("COPY irface_faces (id, identity, source, x1, y1, x2, y2, fingerprint, embedding) "
                  "FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "text", "text", "float8", "float8", "float8", "float8", "text", "bytea"])
        for row in rows:
            copy.write_row(row)


def _schema_state(conn: Any) -> str:
    """"irface" (our tables), "empty" (no tables at all), or the names of some other program's tables."""
    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1")]
    if "irface_meta" in tables:
        return "irface"
    if not tables:
        return "empty"
    return ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")

