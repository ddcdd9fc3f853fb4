"""`irface verify`: cosine similarity and same/different, threshold from the argument, the model or the default."""

import json

import numpy as np
import pytest

from infer_export_util import faces, save_checkpoint, save_state_dict, torch_embed, write_images
from irface.cli import main
from irface.infer import DEFAULT_THRESHOLD, load_model, verify_pair
from irface.data.align import ARCFACE_TEMPLATE


@pytest.fixture
def pair(tmp_path):
    a, b = faces(2, seed=3)
    return write_images(tmp_path, [a, b, a.copy()], ["a.png", "b.png", "a_again.png"])


def test_identical_images_are_the_same_person(tmp_path, pair, capsys):
    save_state_dict(tmp_path / "b.pth")
    a, _, a2 = pair
    assert main(["verify", str(tmp_path / "b.pth"), str(a), str(a2), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert result["same"] is True and result["threshold"] == DEFAULT_THRESHOLD
    assert result["threshold_source"] == "default"


def test_different_images_and_the_threshold_sources(tmp_path, pair, capsys):
    model = save_checkpoint(tmp_path / "ckpt.pt", threshold=0.9)
    a, b, _ = pair
    emb = torch_embed(model, np.stack([faces(2, seed=3)[0], faces(2, seed=3)[1]]))
    expected = float(emb[0] @ emb[1] / np.linalg.norm(emb[0]) / np.linalg.norm(emb[1]))
    result = verify_pair(load_model(tmp_path / "ckpt.pt"), a, b)
    assert result["similarity"] == pytest.approx(expected, abs=1e-5) and result["similarity"] < 0.999
    assert (result["threshold"], result["threshold_source"]) == (0.9, "model")
    assert result["same"] == (expected > 0.9)
    below = verify_pair(load_model(tmp_path / "ckpt.pt"), a, b, threshold=expected - 0.01)
    above = verify_pair(load_model(tmp_path / "ckpt.pt"), a, b, threshold=min(1.0, expected + 0.01))
    assert below["same"] and not above["same"] and below["threshold_source"] == "argument"
    # Exactly at the threshold is "different": eval's rule is distance < t, i.e. cosine > its threshold.
    at = verify_pair(load_model(tmp_path / "ckpt.pt"), a, b, threshold=result["similarity"])
    assert at["same"] is False
    # The human line on stdout.
    assert main(["verify", str(tmp_path / "ckpt.pt"), str(a), str(b), "--threshold", "-1"]) == 0
    assert "same person" in capsys.readouterr().out


def test_threshold_travels_through_onnx_metadata(tmp_path, pair, capsys):
    from irface.export import export_model

    save_checkpoint(tmp_path / "ckpt.pt", threshold=0.123)
    export_model(tmp_path / "ckpt.pt", tmp_path / "m.onnx")
    a, b, _ = pair
    assert main(["verify", str(tmp_path / "m.onnx"), str(a), str(b), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert (result["threshold"], result["threshold_source"]) == (0.123, "model")
    assert "from the model" in capsys.readouterr().out


def test_landmarks_align_photos_before_comparing(tmp_path, capsys):
    from PIL import Image

    save_state_dict(tmp_path / "b.pth")
    # A 16x16 model: the template scaled to 16 pixels. The photo holds the face at 3x, shifted.
    face = faces(1, size=16, seed=5)[0]
    photo = np.zeros((80, 90, 3), np.uint8)
    photo[10:58, 20:68] = np.kron(face, np.ones((3, 3, 1), np.uint8))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(face).save(tmp_path / "face.png")
    lm = ARCFACE_TEMPLATE * (16 / 112) * 3 + [20 + 1.0, 10 + 1.0]  # centre of 3x3 pixel blocks: +1
    text = ",".join(f"{v:.4f}" for v in lm.reshape(-1))
    assert main(["verify", str(tmp_path / "b.pth"), str(tmp_path / "face.png"), str(tmp_path / "photo.png"),
                 "--landmarks-b", text, "--json"]) == 0
    aligned = json.loads(capsys.readouterr().out)["similarity"]
    assert main(["verify", str(tmp_path / "b.pth"), str(tmp_path / "face.png"), str(tmp_path / "photo.png"),
                 "--aligned", "--json"]) == 0
    resized = json.loads(capsys.readouterr().out)["similarity"]
    assert aligned > 0.99 and aligned > resized


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("not_image", "cannot decode image"), ("threshold", "[-1, 1]"),
    ("model_kind", "not a PyTorch weights file"), ("landmarks", "10"),
])
def test_verify_errors_are_one_line(tmp_path, pair, capsys, case, message):
    save_state_dict(tmp_path / "b.pth")
    a, b, _ = pair
    model, extra = tmp_path / "b.pth", []
    if case == "missing":
        b = tmp_path / "gone.png"
    elif case == "not_image":
        b = tmp_path / "b.jpg"
        b.write_text("plain text")
    elif case == "threshold":
        extra = ["--threshold", "2"]
    elif case == "model_kind":
        model = tmp_path / "notes.pth"
        model.write_text("these are not weights")
    elif case == "landmarks":
        extra = ["--landmarks-a", "1,2,3"]
    assert main(["verify", str(model), str(a), str(b), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
