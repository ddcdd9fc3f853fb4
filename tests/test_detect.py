"""Face detection: the numpy pre/post-processing against naive references, and the detector on real photos."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from irface.cli import main

REALFACE = Path(__file__).parent / "fixtures" / "realface"
PHOTOS = sorted(p for p in (REALFACE / "photos").rglob("*") if p.is_file())
GROUP = REALFACE / "group" / "t1.jpg"


def _naive_priors(height: int, width: int) -> np.ndarray:
    # biubug6's PriorBox, loop by loop: for each feature map, row, column, and prior size.
    out = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512))):
        for i in range(int(np.ceil(height / step))):
            for j in range(int(np.ceil(width / step))):
                for s in sizes:
                    out.append([(j + 0.5) * step, (i + 0.5) * step, s, s])
    return np.asarray(out, dtype=np.float32)


def test_priors_match_the_reference_loop_order():
    from irface.detect.retinaface import priors

    for h, w in ((64, 96), (480, 640), (100, 36)):
        np.testing.assert_array_equal(priors(h, w), _naive_priors(h, w))


def test_decode_inverts_the_encoding():
    from irface.detect.retinaface import decode

    rng = np.random.default_rng(0)
    prior = np.array([[50, 60, 32, 32], [200, 100, 128, 128]], np.float32)
    boxes = np.array([[40, 45, 70, 80], [150, 60, 260, 170]], np.float64)
    points = rng.uniform(40, 200, (2, 5, 2))
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    loc = np.concatenate([(centre - prior[:, :2]) / (0.1 * prior[:, 2:]), np.log(size / prior[:, 2:]) / 0.2], 1)
    landm = ((points - prior[:, None, :2]) / (0.1 * prior[:, None, 2:])).reshape(2, 10)
    got_boxes, got_points = decode(loc.astype(np.float32), landm.astype(np.float32), prior)
    np.testing.assert_allclose(got_boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(got_points, points, atol=1e-3)


def test_nms_matches_a_naive_loop():
    from irface.detect.retinaface import nms

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (60, 2))], 1)
    scores = rng.uniform(0, 1, 60)
    expected = []
    for i in np.argsort(-scores):
        if all(iou(boxes[i], boxes[k]) <= 0.4 for k in expected):
            expected.append(i)
    assert nms(boxes, scores, 0.4).tolist() == expected


class _TwoOverlappingFaces:
    """The real network's session with its output replaced by two candidate faces whose boxes overlap at
    IoU 0.5 (no photo reliably gives exactly that): what the detector's own non-maximum suppression
    then keeps is the behaviour under test."""

    def __init__(self, session):
        self.session = session

    def run(self, names, feeds):
        from irface.detect.retinaface import priors

        loc, conf, landm = (a.copy() for a in self.session.run(names, feeds))
        prior = priors(*feeds[next(iter(feeds))].shape[2:]).astype(np.float64)
        side = 150.0  # in the network's input pixels; the second box is shifted by side / 3: IoU = 1/2
        boxes = np.array([[100, 100, 100 + side, 100 + side], [100 + side / 3, 100, 100 + side * 4 / 3, 100 + side]])
        conf[0, :, 1] = 0.0
        for k, (i, box) in enumerate(zip((1000, 2000), boxes)):
            centre, size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
            loc[0, i, :2] = (centre - prior[i, :2]) / (0.1 * prior[i, 2:])
            loc[0, i, 2:] = np.log(size / prior[i, 2:]) / 0.2
            conf[0, i, 1] = 0.99 - 0.1 * k
        return loc, conf, landm


@pytest.mark.parametrize("make", ["load_detector", "Detector"])
def test_default_nms_merges_two_detections_overlapping_at_iou_one_half(make):
    pytest.importorskip("onnxruntime")
    from irface.detect import retinaface
    from irface.detect.retinaface import nms

    boxes = np.array([[0.0, 0.0, 3.0, 3.0], [1.0, 0.0, 4.0, 3.0]])  # IoU 6 / 12 = 1/2
    assert nms(boxes, np.array([0.9, 0.8]), 0.4).tolist() == [0]
    # RetinaFace's published NMS threshold is 0.4 (biubug6's detect.py, insightface's RetinaFace): a
    # second box over half of the first is the same face.
    detector = getattr(retinaface, make)()
    detector.session = _TwoOverlappingFaces(detector.session)
    faces = detector.detect(np.zeros((320, 320, 3), np.uint8))
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.99)
    detector.nms_threshold = 0.7  # the check itself: a looser threshold keeps both
    assert len(detector.detect(np.zeros((320, 320, 3), np.uint8))) == 2


def _detect_json(capsys, *args) -> dict:
    assert main(["detect", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_arcface_order(face: dict) -> None:
    (le, re, nose, lm, rm) = np.asarray(face["landmarks"])
    x1, y1, x2, y2 = face["box"]
    assert le[0] < re[0] and lm[0] < rm[0], "left/right as the viewer sees them"
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1]), "eyes above the nose above the mouth"
    pts = np.asarray(face["landmarks"])
    assert (pts[:, 0] > x1).all() and (pts[:, 0] < x2).all() and (pts[:, 1] > y1).all() and (pts[:, 1] < y2).all()


def test_the_group_photo_has_six_faces(capsys):
    report = _detect_json(capsys, GROUP)
    assert (report["path"], report["width"], report["height"]) == (str(GROUP), 1280, 886)
    assert len(report["faces"]) == 6
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in report["faces"]]
    assert areas == sorted(areas, reverse=True), "largest first"
    for face in report["faces"]:
        _check_arcface_order(face)


def test_every_single_person_photo_has_exactly_one_face(capsys):
    report = _detect_json(capsys, REALFACE / "photos")
    assert [p["path"] for p in report["photos"]] == [str(p) for p in PHOTOS] and not report["skipped"]
    for photo in report["photos"]:
        assert len(photo["faces"]) == 1, photo["path"]
        _check_arcface_order(photo["faces"][0])


def test_coordinates_are_in_the_original_photo_at_any_size():
    from PIL import Image

    from irface.detect import load_detector
    from irface.infer.images import open_rgb

    photo = open_rgb(PHOTOS[0])
    detector = load_detector()
    (full,) = detector.detect(photo)
    half = np.asarray(Image.fromarray(photo).resize((photo.shape[1] // 2, photo.shape[0] // 2), Image.BILINEAR))
    (small,) = detector.detect(half)
    # Same face, coordinates halved (to within a couple of pixels of the larger photo).
    np.testing.assert_allclose(small.landmarks * 2, full.landmarks, atol=4)
    np.testing.assert_allclose(small.box * 2, full.box, atol=8)


def test_options_max_faces_min_size_and_min_score(capsys):
    faces = _detect_json(capsys, GROUP)["faces"]
    assert len(_detect_json(capsys, GROUP, "--max-faces", "2")["faces"]) == 2
    sizes = sorted(min(f["box"][2] - f["box"][0], f["box"][3] - f["box"][1]) for f in faces)
    cut = (sizes[2] + sizes[3]) / 2
    assert len(_detect_json(capsys, GROUP, "--min-size", cut)["faces"]) == 3
    scores = sorted(f["score"] for f in faces)
    cut = (scores[0] + scores[1]) / 2
    kept = _detect_json(capsys, GROUP, "--min-score", cut)["faces"]
    assert len(kept) == 5 and min(f["score"] for f in kept) >= cut


def test_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    from irface.detect import weights

    weights.retinaface_onnx.cache_clear()

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(weights.metadata, "distribution", absent)
    assert main(["detect", str(GROUP)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "irface[detect]" in err[0], err
    weights.retinaface_onnx.cache_clear()


def test_a_bad_photo_among_good_ones_is_skipped(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    report = _detect_json(capsys, PHOTOS[0], bad)
    assert [p["path"] for p in report["photos"]] == [str(PHOTOS[0])]
    assert report["skipped"][0]["name"] == str(bad) and "cannot decode" in report["skipped"][0]["reason"]


def test_a_corrupt_photo_alone_is_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["detect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("irface detect: error: ") and "broken.png" in err[0]
