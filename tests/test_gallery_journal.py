"""The one-file gallery's journal: a change is one synced record beside the file, replayed on open, folded
into the file by `save()`; a torn record is ignored, and no record is ever applied twice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from irface.gallery import Gallery  # noqa: E402
from irface.gallery.journal import journal_path  # noqa: E402

E = 8


def _x(n, seed):
    return np.random.default_rng(seed).normal(size=(n, E))


def _saved(tmp_path, kind="flat"):
    g = Gallery.create(tmp_path / "g.gallery", fingerprint="sha256:a", embedding_size=E, index=kind, templates=True)
    g.add("a", _x(2, 0), ["a1", "a2"])
    g.save()
    return g


def _state(g):
    return g.faces(), g.template_totals(), [(i.tolist(), x.tobytes(), t) for i, _, x, t in g.export_rows()]


def test_changes_after_a_save_are_journaled_and_replayed(tmp_path):
    g = _saved(tmp_path)
    size = (tmp_path / "g.gallery").stat().st_size
    g.add_many(["b", "b"], _x(2, 1), ["b1", "b2"], boxes=[[1, 2, 3, 4], [np.nan] * 4], thumbnails=[b"jpeg", None])
    g.remove("a")
    assert (tmp_path / "g.gallery").stat().st_size == size  # the file was not rewritten
    assert journal_path(tmp_path / "g.gallery").stat().st_size > 0
    again = Gallery.open(tmp_path / "g.gallery")  # as after a crash: no save, no close
    assert _state(again) == _state(g)
    assert again.thumbnail(g.faces("b")[0]["id"]) == b"jpeg"
    g.close()  # folds the journal into the file
    assert journal_path(tmp_path / "g.gallery").stat().st_size == 0
    assert _state(Gallery.open(tmp_path / "g.gallery")) == _state(g)


def test_a_torn_record_is_ignored_and_the_next_change_replaces_it(tmp_path):
    g = _saved(tmp_path)
    g.add("b", _x(1, 1), ["b1"])
    before = _state(Gallery.open(tmp_path / "g.gallery"))
    g.add("c", _x(1, 2), ["c1"])
    journal = journal_path(tmp_path / "g.gallery")
    data = journal.read_bytes()
    for cut in (len(data) - 1, len(data) - 40):  # a crash mid-append: the last record is cut short
        journal.write_bytes(data[:cut])
        torn = Gallery.open(tmp_path / "g.gallery")
        assert _state(torn) == before and "c" not in torn.identities()
    journal.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])  # a damaged byte: the CRC refuses it
    reopened = Gallery.open(tmp_path / "g.gallery")
    assert "c" not in reopened.identities()
    reopened.add("d", _x(1, 3), ["d1"])  # written over the torn tail
    final = Gallery.open(tmp_path / "g.gallery")
    assert final.identities() == ["a", "b", "d"] and _state(final) == _state(reopened)


def test_a_crash_between_compaction_and_emptying_the_journal_applies_nothing_twice(tmp_path):
    g = _saved(tmp_path)
    g.add("b", _x(2, 1), ["b1", "b2"])
    g.remove("a")
    journal = journal_path(tmp_path / "g.gallery")
    stale = journal.read_bytes()
    g.save()  # the compaction: a new file, then an empty journal ...
    journal.write_bytes(stale)  # ... as if the process died before emptying it
    again = Gallery.open(tmp_path / "g.gallery")
    assert _state(again) == _state(g) and len(again) == 2
    again.add("c", _x(1, 5), ["c1"])  # the stale records are dropped before the first new one
    final = Gallery.open(tmp_path / "g.gallery")
    assert final.identities() == ["b", "c"] and _state(final) == _state(again)


def test_an_ivf_taught_by_its_first_add_replays_the_same_lists(tmp_path):
    g = Gallery.create(tmp_path / "g.gallery", fingerprint="sha256:a", embedding_size=E, index="ivf")
    g.save()  # empty: the IVF has no lists yet
    g.add_many([f"p{i}" for i in range(100)], _x(100, 9), [f"{i}.jpg" for i in range(100)])
    again = Gallery.open(tmp_path / "g.gallery")
    assert again.settings()["trained"] == g.settings()["trained"]
    q = _x(5, 10)
    assert again.search(q, top_k=3) == g.search(q, top_k=3)


def test_the_journal_is_folded_in_once_it_outgrows_the_file(tmp_path, monkeypatch):
    import irface.gallery.gallery as gallery_module

    monkeypatch.setattr(gallery_module, "_COMPACT_MIN_BYTES", 0)
    g = _saved(tmp_path)
    journal = journal_path(tmp_path / "g.gallery")
    for i in range(40):
        g.add(f"p{i}", _x(3, i), [f"{i}-{j}" for j in range(3)])
        assert journal.stat().st_size <= (tmp_path / "g.gallery").stat().st_size + 1000
    assert _state(Gallery.open(tmp_path / "g.gallery")) == _state(g)


def test_a_reader_writes_nothing_on_close(tmp_path):
    g = _saved(tmp_path)
    g.add("b", _x(1, 1), ["b1"])  # a journal record, not compacted (no close)
    files = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    reader = Gallery.open(tmp_path / "g.gallery")
    reader.search(_x(1, 2))
    reader.close()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files
    assert "b" in Gallery.open(tmp_path / "g.gallery").identities()
