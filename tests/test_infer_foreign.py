"""Foreign models: input normalisation from arguments, from irface's metadata, or guessed from the graph."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from infer_export_util import faces, save_checkpoint
from irface.cli import main
from irface.infer import load_model

ort = pytest.importorskip("onnxruntime")

MODEL = Path(__file__).parent / "fixtures" / "realface" / "models" / "mobilefacenet_128d.onnx"
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _direct(images: np.ndarray, mean, std) -> np.ndarray:
    """The fixture model run by onnxruntime on inputs normalised by hand, one image at a time (batch 1)."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    x = ((images.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    return np.concatenate([session.run(None, {"input0": x[i:i + 1]})[0] for i in range(len(x))])


def test_the_guess_is_said_and_is_insightfaces_rule(caplog):
    images = faces(3, size=112)
    with caplog.at_level(logging.INFO):
        embedder = load_model(MODEL)
    assert embedder.norm.source == "guess" and embedder.embedding_size == 128
    assert any("assumed RGB, (x - 127.5) / 127.5" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(embedder.embed(images), _direct(images, 127.5, 127.5), rtol=1e-4, atol=1e-4)


def test_mean_std_in_pixel_units_and_bgr(caplog):
    images = faces(3, size=112)
    mean, std = ",".join(map(str, IMAGENET_MEAN)), ",".join(map(str, IMAGENET_STD))
    with caplog.at_level(logging.INFO):
        embedder = load_model(MODEL, input_mean=mean, input_std=std)
    assert not any("assumed" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(embedder.embed(images), _direct(images, IMAGENET_MEAN, IMAGENET_STD),
                               rtol=1e-4, atol=1e-4)
    bgr = load_model(MODEL, input_mean="0", input_std="1", bgr=True)
    np.testing.assert_allclose(bgr.embed(images), _direct(images[..., ::-1], 0.0, 1.0), rtol=1e-4, atol=1e-3)


def test_irface_exports_carry_their_settings(tmp_path, caplog):
    from irface.export import export_model

    save_checkpoint(tmp_path / "ckpt.pt")
    export_model(tmp_path / "ckpt.pt", tmp_path / "m.onnx")
    with caplog.at_level(logging.INFO):
        embedder = load_model(tmp_path / "m.onnx")
    assert embedder.norm.source == "metadata"
    assert (embedder.norm.mean, embedder.norm.std, embedder.norm.bgr) == ((127.5,) * 3, (127.5,) * 3, False)
    assert not any("assumed" in r.getMessage() for r in caplog.records)


def test_a_graph_that_normalises_inside_is_guessed_mean_0_std_1(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from irface.infer.model_file import guess_onnx_norm

    # mxnet-style insightface export: Sub and Mul first, then the network (here a flatten + matmul).
    inits = [numpy_helper.from_array(np.float32(127.5).reshape(1), "m"),
             numpy_helper.from_array(np.float32(1 / 128).reshape(1), "s"),
             numpy_helper.from_array(np.ones((3 * 8 * 8, 4), np.float32), "w")]
    nodes = [helper.make_node("Sub", ["x", "m"], ["a"], name="_minusscalar0"),
             helper.make_node("Mul", ["a", "s"], ["b"], name="_mulscalar0"),
             helper.make_node("Flatten", ["b"], ["c"]), helper.make_node("MatMul", ["c", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "mx.onnx"))
    norm, why = guess_onnx_norm(tmp_path / "mx.onnx")
    assert (norm.mean, norm.std, norm.bgr) == ((0.0,) * 3, (1.0,) * 3, False) and "Sub and Mul" in why


@pytest.mark.parametrize("args, message", [
    (["--input-mean", "1,2"], "one number or three"), (["--input-std", "0"], "above 0"),
    (["--input-std", "abc"], "one number or three"),
])
def test_bad_normalisation_arguments_are_one_line(tmp_path, capsys, args, message):
    rc = main(["embed", str(MODEL), str(tmp_path), "--output", str(tmp_path / "e.npz"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
