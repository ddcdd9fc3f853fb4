"""Real photos to a decision: detect -> align -> embed with a real pretrained model -> verify.

The photos and the MobileFaceNet ONNX are real (tests/fixtures/realface/README.md has their sources
and licences); the model is foreign: fixed batch 1, 128-d, unnormalised output, no metadata.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from irface.cli import main

REALFACE = Path(__file__).parent / "fixtures" / "realface"
PHOTOS = REALFACE / "photos"
GROUP = REALFACE / "group" / "t1.jpg"
MODEL_FILE = REALFACE / "models" / "mobilefacenet_128d.onnx"
IMAGENET = ["--input-mean", "123.675,116.28,103.53", "--input-std", "58.395,57.12,57.375"]


def identity(name: str) -> str:
    return Path(name.split("#")[0]).parent.name


def all_pairs(names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.triu_indices(len(names), 1)
    ids = np.asarray([identity(n) for n in names])
    return i, j, ids[i] == ids[j]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The model in a folder of its own, so that calibration files written beside it stay there."""
    folder = tmp_path_factory.mktemp("model")
    shutil.copy(MODEL_FILE, folder / MODEL_FILE.name)
    return folder / MODEL_FILE.name


@pytest.fixture(scope="module")
def embedded(model, tmp_path_factory):
    """`irface embed` on the raw photos (one run for the module): embeddings and names."""
    from irface.infer import read_embeddings

    out = tmp_path_factory.mktemp("emb") / "photos.npz"
    assert main(["embed", str(model), str(PHOTOS), "--output", str(out), "--no-progress", *IMAGENET]) == 0
    return read_embeddings(out)


def test_raw_photos_embed_to_an_auc_of_at_least_0_99(embedded):
    from irface.eval.protocol import roc_auc

    emb, names = embedded
    assert len(names) == len([p for p in PHOTOS.rglob("*") if p.is_file()])  # one face per photo, none skipped
    i, j, same = all_pairs(names)
    sims = np.sum(emb[i] * emb[j], axis=1)
    assert same.sum() >= 10 and (~same).sum() >= 100
    assert roc_auc(sims, same) >= 0.99


def test_whole_photos_without_detection_do_not(model, tmp_path):
    # The failure these fixtures exist to catch: the same photos resized to 112x112 as they are.
    from irface.eval.protocol import roc_auc
    from irface.infer import read_embeddings

    out = tmp_path / "e.npz"
    assert main(["embed", str(model), str(PHOTOS), "--aligned", "--output", str(out), "--no-progress", *IMAGENET]) == 0
    emb, names = read_embeddings(out)
    i, j, same = all_pairs(names)
    assert roc_auc(np.sum(emb[i] * emb[j], axis=1), same) < 0.9


def test_group_photo_all_faces_are_six_different_people(model, embedded, tmp_path, capsys):
    from irface.infer import read_embeddings

    out = tmp_path / "group.npz"
    assert main(["embed", str(model), str(GROUP), "--all-faces", "--output", str(out), "--no-progress",
                 *IMAGENET]) == 0
    emb, names = read_embeddings(out)
    assert names == [f"{GROUP}#{k}" for k in range(6)]
    sims = emb @ emb.T
    same_pairs = embedded[0] @ embedded[0].T
    # No two of the six are alike as much as the least alike same-person pair of the single photos.
    _, _, same = all_pairs(embedded[1])
    lowest_same = same_pairs[np.triu_indices(len(same_pairs), 1)][same].min()
    assert sims[np.triu_indices(6, 1)].max() < lowest_same


def test_several_faces_without_all_faces_take_the_largest_with_a_warning(model, tmp_path, caplog):
    from irface.infer import read_embeddings

    out = tmp_path / "one.npz"
    assert main(["embed", str(model), str(GROUP), "--output", str(out), "--no-progress", *IMAGENET]) == 0
    emb, names = read_embeddings(out)
    assert names == [str(GROUP)]
    assert any(str(GROUP) in r.getMessage() and "6 faces" in r.getMessage() for r in caplog.records)
    everyone, _ = read_embeddings(tmp_path / "one.npz")
    assert main(["embed", str(model), str(GROUP), "--all-faces", "--output", str(tmp_path / "all.npz"),
                 "--no-progress", *IMAGENET]) == 0
    np.testing.assert_allclose(everyone[0], read_embeddings(tmp_path / "all.npz")[0][0], atol=1e-6)


def test_calibrate_then_verify_gets_every_pair_right(model, capsys):
    """`calibrate` on the identity folders stores a threshold beside the model; `verify` (no flags: the
    input settings were stored too) then decides every same/different pair of the photos correctly
    (all 210 pairs by verify's own threshold and similarity, four through the command itself)."""
    from irface.models.metadata import calibration_path
    from irface.infer import load_model
    from irface.infer import l2_normalize
    from irface.infer.verify import choose_threshold, compare_faces, load_face

    assert main(["verify", str(model), str(PHOTOS / "obama" / "obama.jpg"), str(PHOTOS / "biden" / "biden.jpg"),
                 *IMAGENET]) == 0
    assert "uncalibrated" in capsys.readouterr().out

    assert main(["calibrate", str(model), str(PHOTOS), *IMAGENET, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert calibration_path(model).is_file() and report["accuracy"] == 1.0
    assert json.loads(calibration_path(model).read_text())["input_std"] == "58.395,57.12,57.375"

    embedder = load_model(model)
    assert embedder.norm.source == "calibration" and embedder.threshold_source == "calibration"
    photos = sorted(p for p in PHOTOS.rglob("*") if p.is_file())
    faces = [load_face(p, embedder.input_size) for p in photos]  # each photo detected once, as verify does
    emb = l2_normalize(embedder.embed(np.stack([f.crop for f in faces])))
    threshold, source = choose_threshold(embedder)  # what verify compares against
    assert source == "calibration"
    i, j = np.triu_indices(len(photos), 1)
    same = np.asarray([photos[a].parent == photos[b].parent for a, b in zip(i, j)])
    decided = np.sum(emb[i] * emb[j], axis=1) > threshold
    assert len(same) == 210 and (decided == same).all()

    for a, b, verdict in ((photos[0], photos[1], "different people"),
                          (PHOTOS / "obama" / "obama.jpg", PHOTOS / "obama" / "obama2.jpg", "same person")):
        assert main(["verify", str(model), str(a), str(b), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["same"] == (verdict == "same person") and result["threshold_source"] == "calibration"
        assert abs(result["similarity"] - compare_faces(embedder, faces[photos.index(a)],
                                                         faces[photos.index(b)])["similarity"]) < 1e-5
        assert main(["verify", str(model), str(a), str(b)]) == 0
        assert verdict in capsys.readouterr().out
