"""`irface embed`: files, folders (recursive, sorted), RecordIO; L2-normalised output with its file list."""

import json
import sys

import numpy as np
import pytest

from infer_export_util import faces, save_state_dict, torch_embed, write_images
from irface.cli import main
from irface.infer.embed import read_embeddings


@pytest.fixture
def model_file(tmp_path):
    model = save_state_dict(tmp_path / "b.pth")
    return tmp_path / "b.pth", model


def _normed(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_folders_recursive_sorted_npy_with_sidecar(tmp_path, model_file, capsys):
    path, model = model_file
    imgs = faces(5)
    names = ["set/b/2.png", "set/a/1.jpg", "set/a/0.png", "set/.hidden/x.png", "set/notes.txt"]
    write_images(tmp_path, imgs[:4], names[:4])
    (tmp_path / "set/notes.txt").write_text("not an image, skipped in folders")
    extra = write_images(tmp_path, imgs[4:], ["single.png"])[0]
    out = tmp_path / "out" / "emb.npy"
    assert main(["embed", str(path), str(tmp_path / "set"), str(extra), "--output", str(out),
                 "--batch-size", "2", "--no-progress"]) == 0
    emb, listed = read_embeddings(out)
    expected = [str(tmp_path / n) for n in ["set/a/0.png", "set/a/1.jpg", "set/b/2.png"]] + [str(extra)]
    assert listed == expected and (tmp_path / "out" / "emb.txt").exists()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # PNGs are lossless: compare with PyTorch on the same pixels (the JPEG is decoded by Pillow as irface does).
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in expected])
    np.testing.assert_allclose(emb, _normed(torch_embed(model, pixels)), atol=1e-5)


def test_npz_and_json_summary(tmp_path, model_file, capsys):
    path, _ = model_file
    write_images(tmp_path / "in", faces(3), ["a.png", "b.png", "c.png"])
    out = tmp_path / "emb.npz"
    assert main(["embed", str(path), str(tmp_path / "in"), "--output", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 3 and summary["embedding_size"] == 16
    emb, names = read_embeddings(out)
    assert emb.shape == (3, 16) and [n.rsplit("/", 1)[-1] for n in names] == ["a.png", "b.png", "c.png"]


def test_images_of_another_size_are_resized_like_bin_images(tmp_path, model_file):
    from irface.data import decode_image

    path, model = model_file
    big = faces(1, size=40)[0]
    write_images(tmp_path, [big], ["big.png"])
    out = tmp_path / "e.npy"
    assert main(["embed", str(path), str(tmp_path / "big.png"), "--output", str(out), "--no-progress",
                 "--aligned"]) == 0
    expected = decode_image((tmp_path / "big.png").read_bytes(), 16)
    np.testing.assert_allclose(np.load(out), _normed(torch_embed(model, expected[None])), atol=1e-5)


def test_recordio_folder(tmp_path, model_file):
    from irface.data.recordio import write_recordio_dataset
    from irface.data.images import encode_image

    path, model = model_file
    imgs = faces(3)
    rec = tmp_path / "ms1m"
    write_recordio_dataset(rec, [(i, encode_image(img, "PNG")) for i, img in enumerate(imgs)], 3, (16, 16))
    out = tmp_path / "e.npz"
    assert main(["embed", str(path), str(rec), "--output", str(out), "--no-progress"]) == 0
    emb, names = read_embeddings(out)
    assert names == [f"{rec / 'train.rec'}#{i}" for i in range(3)]
    np.testing.assert_allclose(emb, _normed(torch_embed(model, imgs)), atol=1e-5)


def _errors(tmp_path, capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("empty", "no images"),
    ("bad_suffix", "output must end in"),
    ("parquet", "pyarrow"),
    ("bad_model", "not a PyTorch weights file"),
])
def test_errors_are_one_line_and_leave_no_output(tmp_path, model_file, capsys, monkeypatch, case, message):
    path, _ = model_file
    write_images(tmp_path / "ok", faces(2), ["a.png", "b.png"])
    inputs = [str(tmp_path / "ok")]
    out = tmp_path / "o" / "emb.npy"
    if case == "missing":
        inputs.append(str(tmp_path / "nope.png"))
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        inputs.append(str(tmp_path / "empty"))
    elif case == "bad_suffix":
        out = tmp_path / "o" / "emb.csv"
    elif case == "parquet":
        # pyarrow is in `dev` (the ray extra): the message for an install without it is checked by hiding it.
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
        out = tmp_path / "o" / "emb.parquet"
    elif case == "bad_model":
        path = tmp_path / "bad.pth"
        path.write_text("these are not weights")
    rc, err = _errors(tmp_path, capsys, ["embed", str(path), *inputs, "--output", str(out), "--no-progress"])
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_progress_bar_goes_to_stderr(tmp_path, model_file, capsys):
    path, _ = model_file
    write_images(tmp_path / "in", faces(2), ["a.png", "b.png"])
    assert main(["embed", str(path), str(tmp_path / "in"), "--output", str(tmp_path / "e.npy")]) == 0
    captured = capsys.readouterr()
    assert "embed" in captured.err and "2/2" in captured.err
    assert captured.out.startswith("wrote 2 embeddings")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_quality_writes_each_faces_feature_norm_beside_its_embedding(tmp_path, model_file, capsys, suffix):
    from irface.infer import read_norms

    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path, model = model_file
    imgs = faces(5, seed=3)
    write_images(tmp_path / "in", imgs, [f"{i}.png" for i in range(5)])
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", str(path), str(tmp_path / "in"), "--output", str(out), "--no-progress", "--quality",
                 "--batch-size", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    raw = torch_embed(model, imgs)  # the model's own output, before any normalisation
    norms = read_norms(out)
    assert norms.dtype == np.float32 and norms.shape == (5,)
    np.testing.assert_allclose(norms, np.linalg.norm(raw, axis=1), rtol=1e-5)
    assert summary["norm"]["max"] == pytest.approx(float(norms.max()))
    emb, _ = read_embeddings(out)
    np.testing.assert_allclose(emb, _normed(raw), atol=1e-5)  # the embeddings are what they are without it
    if suffix == ".npy":
        assert summary["files"] == [str(out), str(tmp_path / "emb.norm.npy"), str(tmp_path / "emb.txt")]


def test_quality_from_an_onnx_export_and_none_without_the_flag(tmp_path, model_file):
    from irface.errors import DataError
    from irface.export import export_model
    from irface.infer import read_norms

    path, model = model_file
    export_model(path, tmp_path / "m.onnx")
    imgs = faces(3, seed=4)
    write_images(tmp_path / "in", imgs, ["a.png", "b.png", "c.png"])
    out = tmp_path / "emb.npy"
    assert main(["embed", str(tmp_path / "m.onnx"), str(tmp_path / "in"), "-o", str(out), "--no-progress",
                 "--quality"]) == 0
    np.testing.assert_allclose(read_norms(out), np.linalg.norm(torch_embed(model, imgs), axis=1), rtol=1e-4)
    # Run again without --quality: the earlier norms would describe other rows, so they go.
    assert main(["embed", str(path), str(tmp_path / "in"), "-o", str(out), "--no-progress"]) == 0
    assert not (tmp_path / "emb.norm.npy").exists()
    with pytest.raises(DataError, match="no feature norms.*--quality"):
        read_norms(out)
    assert main(["embed", str(path), str(tmp_path / "in"), "-o", str(tmp_path / "e.npz"), "--no-progress"]) == 0
    with pytest.raises(DataError, match="no feature norms"):
        read_norms(tmp_path / "e.npz")


def test_the_summary_line_is_printed_once(tmp_path, model_file, capsys, caplog):
    # It was printed by the CLI and logged again by the library: "wrote N embeddings" twice.
    path, _ = model_file
    write_images(tmp_path, faces(2), ["a.png", "b.png"])
    with caplog.at_level("INFO"):
        assert main(["embed", str(path), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output",
                     str(tmp_path / "e.npy"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert said.count("wrote 2 embeddings") == 1
