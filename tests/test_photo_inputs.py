"""Bad and awkward photos on the way to an embedding: each is one clear line, and the rest of the batch is kept.

Made here from a real fixture photo: grey-scale, CMYK, PNG with alpha, an EXIF-rotated JPEG, a corrupt
file, a tiny face, a huge photo; and a model that is not a face model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irface.cli import main

REALFACE = Path(__file__).parent / "fixtures" / "realface"
PHOTO = REALFACE / "photos" / "obama" / "obama.jpg"
MODEL = REALFACE / "models" / "mobilefacenet_128d.onnx"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A folder with the original photo and every variant of it, and the names the variants got."""
    folder = tmp_path_factory.mktemp("photos")
    photo = Image.open(PHOTO).convert("RGB")
    photo.save(folder / "a_original.jpg", quality=95)
    photo.convert("L").save(folder / "b_grey.jpg", quality=95)
    photo.convert("CMYK").save(folder / "c_cmyk.jpg", quality=95)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 128))
    rgba.save(folder / "d_alpha.png")
    # Stored turned a quarter to the left, with the tag that says "turn right to view" (6): upright on screen.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(folder / "e_exif_rotated.jpg", quality=95, exif=exif)
    (folder / "f_corrupt.jpg").write_bytes((folder / "a_original.jpg").read_bytes()[:300])
    photo.resize((24, 30)).save(folder / "g_tiny_face.png")
    Image.new("L", (9000, 8000)).save(folder / "h_huge.png")
    return folder


@pytest.fixture(scope="module")
def embedded(batch, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "emb.npz"
    json_out = out.with_suffix(".json")
    assert main(["embed", str(MODEL), str(batch), "--output", str(out), "--no-progress", "--json", str(json_out)]) == 0
    from irface.infer import read_embeddings

    emb, names = read_embeddings(out)
    return dict(zip([Path(n).stem for n in names], emb)), json.loads(json_out.read_text())


def test_grey_cmyk_alpha_and_rotated_photos_give_the_same_face(embedded):
    faces, _ = embedded
    assert sorted(faces) == ["a_original", "b_grey", "c_cmyk", "d_alpha", "e_exif_rotated"]
    original = faces["a_original"]
    assert faces["e_exif_rotated"] @ original > 0.98  # detected upright: the same crop up to JPEG noise
    assert faces["c_cmyk"] @ original > 0.95 and faces["d_alpha"] @ original > 0.98
    assert faces["b_grey"] @ original > 0.7  # colour gone, still clearly the same person


def test_corrupt_tiny_and_huge_photos_are_skipped_with_one_line_each(embedded, batch):
    _, summary = embedded
    reasons = {Path(s["name"]).stem: s["reason"] for s in summary["skipped"]}
    assert sorted(reasons) == ["f_corrupt", "g_tiny_face", "h_huge"]
    assert "cannot decode" in reasons["f_corrupt"]
    assert "no face found" in reasons["g_tiny_face"]
    assert "larger than allowed" in reasons["h_huge"]
    assert all(str(batch) in r and "\n" not in r for r in reasons.values())


def test_strict_stops_at_the_first_bad_photo_and_writes_nothing(batch, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(MODEL), str(batch), "--strict", "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("irface embed: error: ") and "f_corrupt.jpg" in err[-1]
    assert not out.exists()


def test_detect_sees_the_rotated_photo_upright(batch, capsys):
    assert main(["detect", str(batch / "a_original.jpg"), str(batch / "e_exif_rotated.jpg"), "--json"]) == 0
    original, rotated = json.loads(capsys.readouterr().out)["photos"]
    assert (rotated["width"], rotated["height"]) == (original["width"], original["height"])
    np.testing.assert_allclose(rotated["faces"][0]["landmarks"], original["faces"][0]["landmarks"], atol=3)


def test_verify_without_a_face_is_one_line(batch, capsys):
    assert main(["verify", str(MODEL), str(batch / "a_original.jpg"), str(batch / "g_tiny_face.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "g_tiny_face.png: no face found" in err[0]


def test_a_model_that_is_not_a_face_model_is_one_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    # An image-to-image model: output rank 4, not (batch, embedding).
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "not_a_face_model",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 112, 112])])
    path = tmp_path / "segmenter.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["embed", str(path), str(PHOTO), "--output", str(tmp_path / "e.npz"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmenter.onnx: not a face embedding model" in err[0], err
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_reads_as_pillow_shows_it(tmp_path, orientation):
    from PIL import ImageOps

    from irface.infer.images import open_rgb

    pixels = np.random.default_rng(orientation).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"o{orientation}{suffix}"
        Image.fromarray(pixels).save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        got = open_rgb(path)
        assert got.shape == expected.shape and got.flags.c_contiguous
        # simplejpeg and Pillow may round a few JPEG pixels differently by a level.
        assert np.abs(got.astype(int) - expected).max() <= (0 if suffix == ".png" else 2)
