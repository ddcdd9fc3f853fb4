"""Every `irface gallery` command on a PostgreSQL gallery, on real faces (tests/fixtures/realface), and
`irface gallery copy` file -> PostgreSQL -> file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("onnxruntime")
pytest.importorskip("retinaface")
pytest.importorskip("psycopg")

from irface.cli import main  # noqa: E402

REALFACE = Path(__file__).parent / "fixtures" / "realface"
MODEL = str(REALFACE / "models" / "mobilefacenet_128d.onnx")
PHOTOS = REALFACE / "photos"


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _people(tmp_path: Path) -> Path:
    """Every identity with two photos or more, minus its first photo (held out as a probe)."""
    root = tmp_path / "people"
    for person in sorted(PHOTOS.iterdir()):
        photos = sorted(person.iterdir())
        if len(photos) > 1:
            (root / person.name).mkdir(parents=True)
            for p in photos[1:]:
                (root / person.name / p.name).symlink_to(p)
    return root


@pytest.mark.slow
def test_every_gallery_command_on_postgres(tmp_path, capsys, pg_server):
    db = pg_server.new_database()
    url = pg_server.url(db, tcp=True)  # with its password: it must never be printed
    secret = url.split(":")[2].split("@")[0]
    people = _people(tmp_path)
    built = _json(capsys, ["gallery", "build", str(people), "--model", MODEL, "--output", url, "--device", "cpu"])
    assert built["faces"] >= 10 and secret not in json.dumps(built) and "***" in built["gallery"]
    info = _json(capsys, ["gallery", "info", url])
    assert info["store"] == "postgresql" and info["faces"] == built["faces"]
    obama = sorted((PHOTOS / "obama").iterdir())[0]
    found = _json(capsys, ["gallery", "search", url, str(obama), "--threshold", "0.44", "--device", "cpu"])
    assert found["results"][0]["identity"] == "obama"
    report = _json(capsys, ["gallery", "evaluate", url, str(PHOTOS), "--device", "cpu"])
    assert report["rank_1"] == 1.0
    assert _json(capsys, ["gallery", "remove", url, "obama"])["removed"] == {"obama": info["identity_faces"]["obama"]}
    added = _json(capsys, ["gallery", "add", url, "Barack Obama", str(obama), "--device", "cpu"])
    assert added["faces"] == 1
    found = _json(capsys, ["gallery", "search", url, str(sorted((PHOTOS / "obama").iterdir())[1]), "--threshold",
                           "0.44", "--device", "cpu"])
    assert found["results"][0]["identity"] == "Barack Obama"
    # Copy to a file and back: the same gallery.
    out = tmp_path / "copy.gallery"
    copied = _json(capsys, ["gallery", "copy", url, str(out)])
    assert copied["faces"] == built["faces"] - info["identity_faces"]["obama"] + 1
    back = pg_server.url(pg_server.new_database())
    assert main(["gallery", "copy", str(out), back]) == 0
    text = capsys.readouterr().out
    assert "copied" in text and secret not in text
    a = _json(capsys, ["gallery", "info", str(out)])
    b = _json(capsys, ["gallery", "info", back])
    for key in ("faces", "identities", "identity_faces", "fingerprint", "index", "created", "embedding_size"):
        assert a[key] == b[key] == _json(capsys, ["gallery", "info", url])[key], key
    # Building over a database that holds a gallery is refused in one line, without the password.
    capsys.readouterr()
    assert main(["gallery", "build", str(people), "--model", MODEL, "--output", url, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds an irface gallery already" in err[0] and secret not in err[0]


def test_bad_urls_are_one_line(tmp_path, capsys, pg_server):
    db = pg_server.new_database()
    cases = {pg_server.url(db, tcp=True, password="wrong-pw"): "password authentication failed",
             f"postgresql://postgres:pw@127.0.0.1:1/{db}": "cannot connect",
             pg_server.url(db): "an empty database",
             pg_server.url("no_such_db"): "does not exist"}
    for url, why in cases.items():
        capsys.readouterr()
        assert main(["gallery", "info", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err
        assert "wrong-pw" not in err[0] and ":pw@" not in err[0]


def test_copy_keeps_embeddings_bit_for_bit(tmp_path, pg_url):
    from irface.gallery import Gallery, open_gallery

    src = Gallery.create(tmp_path / "a.gallery", fingerprint="sha256:x", embedding_size=8, index="hnsw")
    x = np.random.default_rng(0).normal(size=(50, 8))
    src.add_many([f"p{i % 7}" for i in range(50)], x, [f"{i}.jpg" for i in range(50)])
    src.save()
    assert main(["gallery", "copy", str(tmp_path / "a.gallery"), pg_url]) == 0
    assert main(["gallery", "copy", pg_url, str(tmp_path / "b.gallery")]) == 0
    a, b, pg = Gallery.open(tmp_path / "a.gallery"), Gallery.open(tmp_path / "b.gallery"), open_gallery(pg_url)
    for g in (b, pg):
        (ids_a, rows_a, xa, _), = a.export_rows()
        (ids_g, rows_g, xg, _), = g.export_rows()
        assert np.array_equal(ids_a, ids_g) and rows_a == rows_g and xa.tobytes() == xg.tobytes()
