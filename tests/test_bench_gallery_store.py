"""benchmarks/gallery_store.py makes benchmarks/README.md's file-vs-PostgreSQL figures: keep it runnable at a
tiny size (no timing asserted), and its COPY fill a gallery irface opens as its own."""

from __future__ import annotations

import numpy as np
import pytest

from repo_scripts import load_repo_script

pytest.importorskip("faiss")
pytest.importorskip("psycopg")


def test_copy_fill_makes_a_gallery_irface_opens(pg_url):
    from irface.gallery import open_gallery

    bench = load_repo_script("benchmarks/gallery_store.py")
    bench.fill_postgres(pg_url, 10)
    g = open_gallery(pg_url)
    try:
        assert len(g) == 10 and g.identities() == ["id0", "id1", "id2"]
        match = g.search(bench.faces(10, 0)[5:6], top_k=1)[0][0]
        assert match.identity == "id1" and match.source == "5.jpg" and np.isclose(match.similarity, 1, atol=1e-5)
        g.add("new", bench.faces(1, 7), ["new.jpg"])  # ids continue after the filled ones
        assert len(g) == 11 and g.search(bench.faces(1, 7), top_k=1)[0][0].identity == "new"
    finally:
        g.close()


@pytest.mark.slow
def test_the_benchmark_runs_at_a_tiny_size(pg_server):
    bench = load_repo_script("benchmarks/gallery_store.py")
    report = bench.run([40, 80], 2, [1, 2], pg_server)
    rows = report["rows"]
    assert [(r["faces"], r["store"], r["workers"]) for r in rows] == [
        (40, "file", 1), (40, "postgresql", 1), (40, "postgresql", 2),
        (80, "file", 1), (80, "postgresql", 1), (80, "postgresql", 2)]
    for r in rows:
        assert r["enrol_ms"] > 0 and r["search_ms"] > 0 and r["worker_mb"] > 0 and r["load_s"] >= 0
    assert report["postgres_enrol_interleaved"]["faces"] == [40, 80]
    assert report["postgres_enrol_interleaved"]["ratio"] > 0
