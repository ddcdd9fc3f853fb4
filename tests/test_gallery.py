"""The gallery's index, file and locking on unit vectors (real faces: test_gallery_realface.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("faiss")

from irface.errors import GalleryError, UserError  # noqa: E402
from irface.gallery import Gallery, Match, decision, validate_identity  # noqa: E402

E = 16


def _people(n: int, faces: int = 3, seed: int = 0, spread: float = 0.3):
    """`n` identities, each a random direction plus noise per face; and one fresh probe per identity."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, E))
    gallery = {f"p{i}": centres[i] + spread * rng.normal(size=(faces, E)) for i in range(n)}
    probes = centres + spread * rng.normal(size=(n, E))
    return gallery, probes


def _build(tmp_path, kind="flat", templates=False, n=30, name="g.gallery"):
    g = Gallery.create(tmp_path / name, fingerprint="sha256:a", embedding_size=E, index=kind, templates=templates)
    people, probes = _people(n)
    for who, emb in people.items():
        g.add(who, emb, [f"{who}/{j}.jpg" for j in range(len(emb))], boxes=np.tile([1, 2, 3, 4], (len(emb), 1)))
    return g, probes


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("templates", [False, True])
def test_search_finds_each_person_and_survives_save(tmp_path, kind, templates):
    g, probes = _build(tmp_path, kind, templates)
    results = g.search(probes, top_k=3)
    assert [r[0].identity for r in results] == [f"p{i}" for i in range(30)]
    assert all(len(r) == 3 and len({m.identity for m in r}) == 3 for r in results)
    assert all(r[0].source.startswith(r[0].identity + "/") for r in results)
    g.save()
    again = Gallery.open(tmp_path / "g.gallery", fingerprint="sha256:a")
    assert len(again) == 90 and again.info()["index"] == kind and again.templates == templates
    assert again.search(probes, top_k=3) == results
    assert again.faces("p0")[0]["box"] == [1, 2, 3, 4]


def test_search_by_faces_equals_brute_force(tmp_path):
    g, probes = _build(tmp_path)
    people, _ = _people(30)
    names = [who for who, emb in people.items() for _ in emb]
    unit = np.concatenate([e / np.linalg.norm(e, axis=1, keepdims=True) for e in people.values()])
    q = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    sims = q @ unit.T
    for row, result in zip(sims, g.search(probes, top_k=5)):
        best = {}
        for j in np.argsort(-row):
            best.setdefault(names[j], row[j])
        expected = list(best.items())[:5]
        assert [m.identity for m in result] == [w for w, _ in expected]
        np.testing.assert_allclose([m.similarity for m in result], [s for _, s in expected], atol=1e-5)


def test_threshold_makes_unknown(tmp_path):
    g, probes = _build(tmp_path)
    best = g.search(probes[:1], top_k=2)[0][0].similarity
    above = g.search(probes[:1], top_k=2, threshold=best - 0.01)[0]
    below = g.search(probes[:1], top_k=2, threshold=best)[0]
    assert above[0].accepted and decision(above) == "p0"
    assert not below[0].accepted and decision(below) == "unknown"  # strictly above, as `verify` decides


def test_remove_and_empty_gallery(tmp_path):
    g, probes = _build(tmp_path, "hnsw")
    assert g.remove("p0") == 3 and g.remove("p0") == 0
    assert g.search(probes[:1], top_k=1)[0][0].identity != "p0"
    assert "p0" not in g.identities() and len(g) == 87
    empty = Gallery.create(tmp_path / "e.gallery", fingerprint="sha256:a", embedding_size=E)
    assert empty.search(probes[:2]) == [[], []]
    empty.save()
    assert len(Gallery.open(tmp_path / "e.gallery")) == 0


def test_another_models_gallery_is_refused(tmp_path):
    g, _ = _build(tmp_path)
    g.save()
    with pytest.raises(GalleryError, match="built with another model") as e:
        Gallery.open(tmp_path / "g.gallery", fingerprint="sha256:b")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_damaged_gallery_is_refused(tmp_path, damage):
    g, _ = _build(tmp_path)
    g.save()
    path = tmp_path / "g.gallery"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "garbage":
        data = bytearray(b"hello" * 100)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError) as e:
        Gallery.open(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["", " ", "../x", "a/b", "a\\b", "..", ".", "x\n", " lead", "a\x00b", "x" * 129])
def test_bad_identity_names_are_refused(tmp_path, name):
    g = Gallery.create(tmp_path / "g.gallery", fingerprint="sha256:a", embedding_size=E)
    with pytest.raises(GalleryError):
        g.add(name, np.ones((1, E)), ["a.jpg"])
    assert len(g) == 0


@pytest.mark.parametrize("name", ["obama", "Lin-Manuel Miranda", "O'Brien (2)", "José_Núñez", "李小龙"])
def test_good_identity_names(name):
    assert validate_identity(name) == name


def test_bad_embeddings_are_refused(tmp_path):
    g = Gallery.create(tmp_path / "g.gallery", fingerprint="sha256:a", embedding_size=E)
    for emb, sources in [(np.ones((2, E + 1)), ["a", "b"]), (np.full((1, E), np.nan), ["a"]),
                         (np.zeros((1, E)), ["a"]), (np.ones((2, E)), ["a"])]:
        with pytest.raises(UserError):
            g.add("x", emb, sources)
    with pytest.raises(GalleryError):
        g.search(np.ones((1, E)), top_k=0)
    assert len(g) == 0 and g.identities() == []


def test_concurrent_add_search_and_save_never_see_half_a_gallery(tmp_path):
    """Each add enrols 4 faces of one person; readers must only ever see whole people."""
    path = tmp_path / "g.gallery"
    g = Gallery.create(path, fingerprint="sha256:a", embedding_size=E, templates=True)
    g.save()
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(60, E))
    added: list[int] = []
    errors: list[str] = []
    done = threading.Event()

    def adder():
        for i, c in enumerate(centres):
            g.add(f"p{i}", c + 0.01 * rng.normal(size=(4, E)), [f"p{i}/{j}.jpg" for j in range(4)])
            added.append(i)
            if i % 10 == 0:
                g.save()
        g.save()
        done.set()

    def searcher():
        while not done.is_set():
            known = list(added)
            if not known:
                continue
            i = known[-1]
            for by in ("faces", "templates"):
                m = g.search(centres[i], top_k=1, by=by)[0][0]
                if m.identity != f"p{i}" or not m.source.startswith(f"p{i}/"):
                    errors.append(f"{by}: p{i} -> {m}")
            info = g.info()
            if info["faces"] != 4 * info["identities"]:
                errors.append(f"half an add seen: {info['faces']} faces of {info['identities']} people")

    def reader():
        while not done.is_set():
            try:
                seen = Gallery.open(path)
            except GalleryError as e:
                errors.append(f"open: {e}")
                continue
            if len(seen) != 4 * len(seen.identities()):
                errors.append("half an add on disk")

    threads = [threading.Thread(target=f) for f in (adder, searcher, searcher, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(Gallery.open(path)) == 240


def test_match_is_plain_data():
    m = Match("a", 0.5, "a/1.jpg")
    assert m.accepted and m == Match("a", 0.5, "a/1.jpg", True)


def test_identification_figures_from_search_lists():
    from irface.gallery.photos import identification_figures

    # Mated: ranks 1, 1, 3 and one past the list (11); ten non-mated top scores 0.0 .. 0.9.
    figs = identification_figures([1, 1, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                                  [0.95, 0.5, 0.7, -np.inf] + [np.nan] * 10,
                                  [i / 10 for i in range(10)])
    assert (figs["mated"], figs["nonmated"]) == (4, 10)
    assert (figs["rank_1"], figs["rank_5"], figs["rank_10"]) == (0.5, 0.75, 0.75)
    # FPIR 1e-1 of ten allows one alarm: threshold 0.8 (only 0.9 above); rank-1 mates above it: 0.95.
    assert figs["tpir_at_fpir"]["1e-01"] == {"tpir": 0.25, "threshold": 0.8}
    assert figs["tpir_at_fpir"]["1e-02"] == {"tpir": None, "threshold": None}  # needs 100 non-mated


def test_batched_exact_search_equals_one_query_at_a_time(tmp_path):
    """Batches take the matmul path, single queries faiss's own: same answers, after removals too."""
    g, probes = _build(tmp_path, n=40)
    g.remove("p3")
    g.remove("p17")
    batch = g.nearest(probes, 7)
    for row, q in enumerate(probes):
        sims, ids = g.nearest(q, 7)
        np.testing.assert_array_equal(ids[0], batch[1][row])
        np.testing.assert_allclose(sims[0], batch[0][row], atol=1e-5)
    for together, q in zip(g.search(probes, top_k=3), probes):
        alone = g.search(q, top_k=3)[0]
        assert [(m.identity, m.source) for m in together] == [(m.identity, m.source) for m in alone]
        np.testing.assert_allclose([m.similarity for m in together], [m.similarity for m in alone], atol=1e-5)


@pytest.mark.parametrize("saved", [False, True])
def test_an_empty_enrolment_changes_nothing(tmp_path, saved):
    g = Gallery.create(tmp_path / "g.gallery", fingerprint="sha256:a", embedding_size=E)
    if saved:
        g.save()
    assert g.add_many([], np.zeros((0, E)), []) == [] and len(g) == 0


def test_one_spelling_per_person(tmp_path):
    # "Bob" and "bob" (or full-width "ＢＯＢ") are one person: a new spelling of an enrolled name is refused,
    # also within one batch; the enrolled spelling appends; once it is gone, any spelling is free.
    from irface.gallery.names import NameTaken

    g = Gallery.create(tmp_path / "g.gallery", fingerprint="sha256:x", embedding_size=8)
    rng = np.random.default_rng(0)
    g.add("Bob", rng.normal(size=(1, 8)), ["a.jpg"])
    for other in ("bob", "ＢＯＢ"):
        with pytest.raises(NameTaken, match=f"{other!r} already exists as 'Bob'"):
            g.add(other, rng.normal(size=(1, 8)), ["b.jpg"])
    with pytest.raises(NameTaken):
        g.add_many(["Ann", "ANN"], rng.normal(size=(2, 8)), ["c.jpg", "d.jpg"])
    assert g.identities() == ["Bob"]
    g.add("Bob", rng.normal(size=(1, 8)), ["e.jpg"])
    assert g.remove("Bob") == 2
    g.add("bob", rng.normal(size=(1, 8)), ["f.jpg"])
    g.save()
    assert Gallery.open(tmp_path / "g.gallery").identities() == ["bob"]


def test_identity_folders_skip_hidden_folders_as_the_photo_listing_does(tmp_path):
    # `irface embed GALLERY_DIR` (and so `embed --ray` + `gallery build --from-embeddings`) lists no photo
    # under a hidden folder; `gallery build GALLERY_DIR` made one an identity (".thumbnails", ".git", ...).
    from irface.gallery.photos import identity_folders

    for folder in ("alice", ".thumbnails"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.jpg").write_bytes(b"listed, never read here")
    (tmp_path / ".DS_Store").write_bytes(b"")
    found, skipped = identity_folders(tmp_path)
    assert list(found) == ["alice"] and skipped == []
