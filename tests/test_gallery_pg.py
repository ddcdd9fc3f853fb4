"""The gallery in PostgreSQL (a real throwaway server, tests/pg_support.py): the same gallery as a file,
kept current across processes by the change log; copy between stores; bad URLs in one line."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("faiss")
psycopg = pytest.importorskip("psycopg")

from irface.errors import GalleryError, GalleryUnavailable  # noqa: E402
from irface.gallery import Gallery, PgGallery, copy_gallery, create_gallery, open_gallery  # noqa: E402

E = 16
FP = "sha256:a"


def _faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, E)).astype(np.float32)


def _fill(g, people: int = 6, faces: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for i in range(people):
        emb = _faces(faces, seed + i)
        g.add(f"p{i}", emb, [f"p{i}/{j}.jpg" for j in range(faces)], boxes=np.tile([1, 2, 3, 4], (faces, 1)))
        out[f"p{i}"] = emb
    return out


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("templates", [False, True])
def test_postgres_gallery_searches_as_the_file_gallery(tmp_path, pg_url, kind, templates):
    file_g = Gallery.create(tmp_path / "g.gallery", fingerprint=FP, embedding_size=E, index=kind, templates=templates)
    pg_g = create_gallery(pg_url, fingerprint=FP, embedding_size=E, index=kind, templates=templates)
    assert isinstance(pg_g, PgGallery)
    people = _fill(file_g)
    _fill(pg_g)
    probes = np.stack([e.mean(0) for e in people.values()])
    assert pg_g.search(probes, top_k=3) == file_g.search(probes, top_k=3)
    # A second process's view: loaded from the database, the same answers.
    other = open_gallery(pg_url, fingerprint=FP)
    assert other.search(probes, top_k=3) == file_g.search(probes, top_k=3)
    assert other.faces("p1") == file_g.faces("p1") and len(other) == 18
    assert other.template_totals() == file_g.template_totals()
    assert pg_g.remove("p2") == 3 and file_g.remove("p2") == 3
    assert other.search(probes, top_k=3) == file_g.search(probes, top_k=3)
    assert "p2" not in other.identities()
    other.close()
    pg_g.close()


def test_every_change_is_seen_by_every_later_search_of_another_process(pg_url):
    a = create_gallery(pg_url, fingerprint=FP, embedding_size=E)
    a.save()
    b = open_gallery(pg_url, fingerprint=FP)
    for i in range(5):
        emb = _faces(1, 100 + i)
        a.add(f"x{i}", emb, [f"x{i}.jpg"])
        match = b.search(emb, top_k=1)[0][0]  # b was not told: it reads the log before searching
        assert match.identity == f"x{i}" and match.similarity == pytest.approx(1.0, abs=1e-5)
        assert match.face_id == a.faces(f"x{i}")[0]["id"]
    b.remove("x3")
    assert "x3" not in a.identities() and len(a) == 4


def test_concurrent_writers_log_has_no_gap(pg_url):
    """Writers in parallel connections: every reader that catches up concurrently ends with every face
    (a log numbered outside commit order would let a reader skip a change for ever)."""
    g = create_gallery(pg_url, fingerprint=FP, embedding_size=E)
    g.save()
    writers = [open_gallery(pg_url) for _ in range(4)]
    reader = open_gallery(pg_url)
    stop = threading.Event()
    errors = []

    def write(w, k):
        try:
            for i in range(15):
                w.add(f"w{k}", _faces(1, 1000 * k + i), [f"{k}/{i}.jpg"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def read():
        while not stop.is_set():
            reader.search(_faces(1, 7), top_k=1)

    threads = [threading.Thread(target=write, args=(w, k)) for k, w in enumerate(writers)]
    rt = threading.Thread(target=read)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    rt.join()
    assert not errors
    assert len(reader) == 60 and sorted(reader.identities()) == ["w0", "w1", "w2", "w3"]
    ids = sorted(f["id"] for f in reader.faces())
    assert ids == list(range(60))
    for w in writers:
        w.close()


def test_same_identity_from_two_processes_appends_and_removal_is_ordered(pg_url):
    a = create_gallery(pg_url, fingerprint=FP, embedding_size=E, templates=True)
    a.save()
    b = open_gallery(pg_url)
    a.add("same", _faces(2, 1), ["a1", "a2"])
    b.add("same", _faces(3, 2), ["b1", "b2", "b3"])
    assert len(a.faces("same")) == 5 and a.template_totals()["same"][0] == 5
    assert b.remove("same") == 5
    a.add("same", _faces(1, 3), ["a3"])  # an enrolment after the removal: only its faces remain
    assert [f["source"] for f in b.faces("same")] == ["a3"]


def test_one_spelling_per_person_across_processes(pg_url):
    # Two workers enrolling "Bob" and "bob": each process's memory may not have the other's name yet, so the
    # rule is checked in the database, under the change lock (a check in the server alone let both in).
    from irface.gallery.names import NameTaken

    a = create_gallery(pg_url, fingerprint=FP, embedding_size=E)
    a.save()
    b = open_gallery(pg_url)
    b.identities()  # b's memory is current now; a's enrolment below is not in it
    a.add("Bob", _faces(1, 1), ["a1"])
    with pytest.raises(NameTaken, match="'bob' already exists as 'Bob'"):
        b.add("bob", _faces(1, 2), ["b1"])
    with pytest.raises(NameTaken):
        b.add("ＢＯＢ", _faces(1, 3), ["b2"])  # full-width letters: the same name in another form
    b.add("Bob", _faces(1, 4), ["b3"])  # the same spelling appends
    assert a.identities() == ["Bob"] and len(a.faces("Bob")) == 2
    assert b.remove("Bob") == 2
    b.add("bob", _faces(1, 5), ["b4"])  # once Bob is gone, the name is free in any spelling
    assert a.identities() == ["bob"]


def test_thumbnails_are_stored_and_removed_with_their_face(pg_url, tmp_path):
    g = create_gallery(pg_url, fingerprint=FP, embedding_size=E)
    ids = g.add_many(["t", "t"], _faces(2, 5), ["up:1", "up:2"], thumbnails=[b"jpeg-1", None])
    other = open_gallery(pg_url)
    assert other.thumbnail(ids[0]) == b"jpeg-1" and other.thumbnail(ids[1]) is None
    other.remove("t")
    assert g.thumbnail(ids[0]) is None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM irface_thumbnails").fetchone()[0] == 0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_copy_file_to_postgres_and_back_is_exact(tmp_path, pg_url, kind):
    src = Gallery.create(tmp_path / "a.gallery", fingerprint=FP, embedding_size=E, index=kind, templates=True)
    _fill(src, people=8)
    src.add_many(["p0"], _faces(1, 99), ["upload:p0/x.jpg"], thumbnails=[b"\xff\xd8picture"])
    src.remove("p3")
    src.save()
    copy_gallery(tmp_path / "a.gallery", pg_url)
    copy_gallery(pg_url, tmp_path / "b.gallery")
    a, b = Gallery.open(tmp_path / "a.gallery"), Gallery.open(tmp_path / "b.gallery")
    pg = open_gallery(pg_url)
    for g in (pg, b):
        assert g.faces() == a.faces()
        assert g.template_totals() == a.template_totals()
        assert g.settings() == a.settings()
        ea = [x for _, _, x, _ in a.export_rows()]
        eg = [x for _, _, x, _ in g.export_rows()]
        assert all(np.array_equal(p.view(np.uint32), q.view(np.uint32)) for p, q in zip(ea, eg))
        assert [t for *_, t in g.export_rows()] == [t for *_, t in a.export_rows()]
    q = _faces(4, 50)
    assert pg.search(q, top_k=3) == a.search(q, top_k=3) == b.search(q, top_k=3)
    with pytest.raises(GalleryError, match="exists"):
        copy_gallery(pg_url, tmp_path / "b.gallery")
    with pytest.raises(GalleryError, match="holds an irface gallery already"):
        copy_gallery(tmp_path / "a.gallery", pg_url)


def test_refusals_are_one_line_without_the_password(pg_server, pg_url):
    name = pg_server.new_database()
    wrong = pg_server.url(name, tcp=True, password="not-the-password")
    with pytest.raises(GalleryUnavailable) as e:
        open_gallery(wrong)
    assert "not-the-password" not in str(e.value) and "password authentication failed" in str(e.value)
    assert "\n" not in str(e.value) and "***" in str(e.value)
    with pytest.raises(GalleryUnavailable, match="cannot connect"):
        open_gallery("postgresql://u:secret@127.0.0.1:1/db")
    with pytest.raises(GalleryError, match="not a valid PostgreSQL URL") as e:
        open_gallery("postgresql://u:secret@host/db?nonsense=1")
    assert "secret" not in str(e.value)
    with pytest.raises(GalleryError, match="an empty database"):
        open_gallery(pg_server.url(name, tcp=True))
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE users (id int)")
    with pytest.raises(GalleryError, match=r"other tables \(users\)"):
        open_gallery(pg_url)
    with pytest.raises(GalleryError, match="other tables"):
        create_gallery(pg_url, fingerprint=FP, embedding_size=E)


def test_another_schema_version_or_model_is_refused(pg_url):
    g = create_gallery(pg_url, fingerprint=FP, embedding_size=E, model="m.onnx")
    g.save()
    with pytest.raises(GalleryError, match="built with another model"):
        open_gallery(pg_url, fingerprint="sha256:b")
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE irface_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(GalleryError, match="schema version 99, this irface reads 1"):
        open_gallery(pg_url)


def test_a_lost_server_is_unavailable_then_reconnects(pg_url):
    g = create_gallery(pg_url, fingerprint=FP, embedding_size=E)
    g.add("a", _faces(1, 1), ["a.jpg"])
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the server ends our session, as a restart would
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = 'irface' AND pid <> pg_backend_pid()")
    with pytest.raises(GalleryUnavailable, match="unavailable"):
        g.search(_faces(1, 1))
    assert g.search(_faces(1, 1))[0][0].identity == "a"  # the next call reconnects


def test_two_processes_creating_a_gallery_in_one_empty_database_share_it(pg_url, monkeypatch):
    import irface.gallery.pg as pg

    settings = {"fingerprint": FP, "embedding_size": E}
    first = open_gallery(pg_url, create=settings)  # made the tables
    real, calls = pg._schema_state, []

    def found_empty_first(conn):  # the second process looked just before the first one made them
        calls.append(1)
        return "empty" if len(calls) == 1 else real(conn)

    monkeypatch.setattr(pg, "_schema_state", found_empty_first)
    second = open_gallery(pg_url, create=settings)
    monkeypatch.undo()
    first.add("a", _faces(1, 1), ["a.jpg"])
    assert second.identities() == ["a"] and len(calls) == 3


def test_an_ivf_trained_before_its_first_add_shares_its_lists(tmp_path, pg_url):
    """`irface gallery build --index ivf` trains on everything first: every process then uses those lists."""
    x = _faces(200, 4)
    names = [f"p{i % 50}" for i in range(200)]
    g = create_gallery(pg_url, fingerprint=FP, embedding_size=E, index="ivf")
    f = Gallery.create(tmp_path / "g.gallery", fingerprint=FP, embedding_size=E, index="ivf")
    for gallery in (g, f):
        gallery.train(x)
        gallery.add_many(names, x, [f"{i}.jpg" for i in range(200)])
    other = open_gallery(pg_url)
    assert other.settings()["trained"] == g.settings()["trained"] == f.settings()["trained"]
    q = _faces(5, 5)
    assert other.search(q, top_k=3) == f.search(q, top_k=3)
