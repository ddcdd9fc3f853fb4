"""`irface calibrate`: the threshold rules, and a `.bin` of real aligned faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from irface.cli import main
from irface.errors import DataError
from irface.infer.calibrate import pick_threshold

REALFACE = Path(__file__).parent / "fixtures" / "realface"


def test_best_accuracy_is_halfway_between_the_nearest_same_and_different_pairs():
    scores = np.array([0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
    issame = np.array([True, True, True, False, False, False])
    r = pick_threshold(scores, issame)
    assert r["threshold"] == pytest.approx(0.4) and r["accuracy"] == 1.0 and r["rule"] == "best accuracy"


def test_best_accuracy_when_the_classes_overlap():
    scores = np.array([0.9, 0.6, 0.35, 0.5, 0.2, 0.1])
    issame = np.array([True, True, True, False, False, False])
    r = pick_threshold(scores, issame)
    # No threshold separates them (0.35 same < 0.5 different): the best decides 5 of 6 right.
    assert r["accuracy"] == pytest.approx(5 / 6)
    assert np.mean((scores > r["threshold"]) == issame) == pytest.approx(5 / 6)


def test_far_target_sits_on_a_different_pair():
    rng = np.random.default_rng(0)
    neg, pos = rng.uniform(-0.2, 0.5, 1000), rng.uniform(0.3, 0.9, 100)
    scores, issame = np.r_[pos, neg], np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    r = pick_threshold(scores, issame, far=0.01)
    assert r["far"] <= 0.01 and r["threshold"] in neg and np.sum(neg > r["threshold"]) == 10
    with pytest.raises(DataError, match="same-person and different-person"):
        pick_threshold(scores[:100], issame[:100])


def test_a_bin_of_real_aligned_faces(tmp_path, capsys):
    from irface.data import save_bin
    from irface.infer.photo import faces_from_file

    photos = {p.parent.name: [] for p in (REALFACE / "photos").rglob("*") if p.is_file()}
    for p in sorted((REALFACE / "photos").rglob("*")):
        if p.is_file():
            photos[p.parent.name].append(faces_from_file(p)[0].crop)
    people = [k for k, v in photos.items() if len(v) >= 2]
    images, issame = [], []
    for i, name in enumerate(people):
        images += [photos[name][0], photos[name][1]]  # a same pair
        images += [photos[name][0], photos[people[(i + 1) % len(people)]][0]]  # a different pair
        issame += [True, False]
    save_bin(tmp_path / "pairs.bin", np.stack(images), issame)
    model = REALFACE / "models" / "mobilefacenet_128d.onnx"
    assert main(["calibrate", str(model), str(tmp_path / "pairs.bin"), "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["same_pairs"] == report["different_pairs"] == len(people) >= 5
    assert report["accuracy"] == 1.0 and "file" not in report
    assert not (REALFACE / "models" / "mobilefacenet_128d.onnx.irface.json").exists()


def test_photos_directly_in_the_folder_are_one_line(tmp_path, capsys):
    import shutil

    shutil.copy(REALFACE / "photos" / "obama" / "obama.jpg", tmp_path / "obama.jpg")
    model = REALFACE / "models" / "mobilefacenet_128d.onnx"
    assert main(["calibrate", str(model), str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "folder of their own" in err[0]
