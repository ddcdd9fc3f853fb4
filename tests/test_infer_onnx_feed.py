"""Foreign ONNX models as other tools ship them: NHWC inputs, declared inputs that no node reads, outputs
shaped (batch, E, 1, 1) or (batch, 1, E), several outputs, block-quantised int8 weights.

The real MobileFaceNet fixture is rewritten with the onnx library into each shape (into tmp_path);
each must embed the fixture photos through `irface embed` exactly as the original does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from irface.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

REALFACE = Path(__file__).parent / "fixtures" / "realface"
MODEL = REALFACE / "models" / "mobilefacenet_128d.onnx"
PHOTOS = REALFACE / "photos"
IMAGENET = ["--input-mean", "123.675,116.28,103.53", "--input-std", "58.395,57.12,57.375"]


def _load(source: Path = MODEL):
    return onnx.load(str(source))


def _save(model, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name: str, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def nhwc(path: Path) -> Path:
    """The model as a TensorFlow conversion looks: (1, 112, 112, 3) in, a Transpose in front."""
    m = _load()
    old = m.graph.input[0]
    m.graph.node.insert(0, helper.make_node("Transpose", ["image_nhwc"], [old.name], perm=[0, 3, 1, 2]))
    new = helper.make_tensor_value_info("image_nhwc", TensorProto.FLOAT, [1, 112, 112, 3])
    del m.graph.input[:]
    m.graph.input.append(new)
    return _save(m, path)


def unused_input(path: Path, names=("unused_mask",), source: Path = MODEL) -> Path:
    """Declared inputs beside the image that no node reads."""
    m = _load(source)
    for name in names:
        m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, 4]))
    return _save(m, path)


def reshaped_output(path: Path, shape: list[int]) -> Path:
    """The embedding output reshaped to `shape` (e.g. (1, 128, 1, 1) or (1, 1, 128))."""
    m = _load()
    out = m.graph.output[0]
    for node in m.graph.node:
        node.output[:] = [f"{out.name}_flat" if o == out.name else o for o in node.output]
    m.graph.initializer.append(_const("out_shape", shape))
    m.graph.node.append(helper.make_node("Reshape", [f"{out.name}_flat", "out_shape"], [out.name]))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, shape))
    return _save(m, path)


def two_outputs(path: Path, first: str, second: str) -> Path:
    """Outputs (logits-like (1, 10) first, then the embedding named `second`)."""
    m = _load()
    out = m.graph.output[0]
    for node in m.graph.node:
        node.output[:] = [second if o == out.name else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.ones((128, 10), np.float32), "head_w"))
    m.graph.node.append(helper.make_node("MatMul", [second, "head_w"], [first]))
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info(first, TensorProto.FLOAT, [1, 10]),
                           helper.make_tensor_value_info(second, TensorProto.FLOAT, [1, 128])])
    return _save(m, path)


def block_quantised(path: Path, block: int = 64) -> Path:
    """As OpenCV zoo's block-quantised models (SFace int8bq) are made: opset 21, each Conv / MatMul /
    Gemm weight stored as int8 blocks along its flattened rows with a scale and zero point per block,
    rebuilt by DequantizeLinear (block_size) + Reshape; the old float weight names stay declared as
    graph inputs that no node reads."""
    m = onnx.version_converter.convert_version(_load(), 21)
    weights = {t.name: t for t in m.graph.initializer}
    done = set()
    for node in list(m.graph.node):
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        for k, name in enumerate(node.input):
            w = numpy_helper.to_array(weights[name]) if name in weights else None
            if w is None or w.ndim < 2 or w.size < block:  # biases stay float
                continue
            rows, axis = w.reshape(w.shape[0], -1), 1
            size = next(d for d in range(block, 0, -1) if rows.shape[axis] % d == 0)
            blocks = rows.reshape(*rows.shape[:axis], rows.shape[axis] // size, size)
            lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
            scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
            zero = np.clip(np.rint(-128 - lo / scale), -128, 127).astype(np.int8)
            q = np.clip(np.rint(blocks / scale[..., None] + zero[..., None]), -128, 127).astype(np.int8)
            q = q.reshape(rows.shape)
            if name not in done:
                m.graph.initializer.remove(weights[name])
                m.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"),
                                            numpy_helper.from_array(scale, f"{name}_scales"),
                                            numpy_helper.from_array(zero, f"{name}_zp"),
                                            _const(f"{name}_shape", w.shape)])
                m.graph.node.insert(0, helper.make_node("Reshape", [f"{name}_dq", f"{name}_shape"], [f"{name}_w"]))
                m.graph.node.insert(0, helper.make_node("DequantizeLinear",
                                                        [f"{name}_q", f"{name}_scales", f"{name}_zp"],
                                                        [f"{name}_dq"], axis=axis, block_size=size))
                m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(w.shape)))
                done.add(name)
            node.input[k] = f"{name}_w"
    assert len(done) >= 10
    return _save(m, path)


def _embed(model: Path, out: Path, *extra: str) -> tuple[np.ndarray, list[str]]:
    from irface.infer import read_embeddings

    assert main(["embed", str(model), str(PHOTOS), "--output", str(out), "--no-progress", *IMAGENET, *extra]) == 0
    return read_embeddings(out)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return _embed(MODEL, tmp_path_factory.mktemp("orig") / "e.npz")


def _auc(emb: np.ndarray, names: list[str]) -> float:
    from irface.eval.protocol import roc_auc

    i, j = np.triu_indices(len(names), 1)
    ids = np.asarray([Path(n).parent.name for n in names])
    return roc_auc(np.sum(emb[i] * emb[j], axis=1), ids[i] == ids[j])


@pytest.mark.parametrize("rewrite", [
    nhwc, unused_input, lambda p: reshaped_output(p, [1, 128, 1, 1]), lambda p: reshaped_output(p, [1, 1, 128]),
    lambda p: two_outputs(p, "logits", "embedding"),
], ids=["nhwc", "unused-input", "out-b-e-1-1", "out-b-1-e", "two-outputs"])
def test_rewritten_model_embeds_as_the_original(rewrite, original, tmp_path):
    model = rewrite(tmp_path / "variant.onnx")
    emb, names = _embed(model, tmp_path / "e.npz")
    ref, ref_names = original
    assert names == ref_names and len(names) == 21
    assert np.abs(emb - ref).max() <= 1e-5
    assert _auc(emb, names) == 1.0


def test_block_quantised_model_with_its_old_weight_names_as_inputs(original, tmp_path):
    model = block_quantised(tmp_path / "int8bq.onnx")
    declared = [i.name for i in onnx.load(str(model)).graph.input]
    assert len(declared) > 10  # the image and the old weight names
    emb, names = _embed(model, tmp_path / "e.npz")
    ref, _ = original
    assert names == original[1]
    assert np.min(np.sum(emb * ref, axis=1)) > 0.98  # int8 weights: close to the original, not equal
    assert _auc(emb, names) == 1.0


def test_what_was_decided_is_said_once(tmp_path, caplog):
    from irface.infer import load_model

    model = unused_input(tmp_path / "b.onnx", ("mask", "other"), source=nhwc(tmp_path / "a.onnx"))
    with caplog.at_level(logging.INFO):
        embedder = load_model(model)
    said = [r.getMessage() for r in caplog.records if "NHWC" in r.getMessage()]
    assert len(said) == 1, said
    assert "'image_nhwc' NHWC" in said[0] and "channels last" in said[0] and "mask, other" in said[0]
    assert embedder.input_hw == (112, 112) and embedder.feed.dropped == ["mask", "other"]


def _graph_model(path: Path, inputs, outputs, nodes, inits=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def pixels_model(path: Path, shape: list) -> Path:
    """A "model" whose embedding is its input's pixels (Flatten): shows the crop irface fed it."""
    return _graph_model(path, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], None])],
                        [helper.make_node("Flatten", ["x"], ["y"])])


@pytest.mark.parametrize("shape, size", [
    ([1, 112, 96, 3], (112, 96)),  # SphereFace / CosFace crop, NHWC
    (["n", 3, 160, 160], 160),  # FaceNet-sized, dynamic batch
    ([1, 3, 128, 128], 128),  # insightface's 128 convention
])
def test_the_crop_fed_is_the_familys_alignment_for_the_models_size(tmp_path, shape, size):
    from irface.infer import read_embeddings
    from irface.data.align import align_face
    from irface.infer.embed import l2_normalize
    from irface.infer.images import open_rgb
    from irface.infer.photo import default_detector

    model = pixels_model(tmp_path / "pixels.onnx", shape)
    photo = PHOTOS / "lennon" / "lennon-1.jpg"
    out = tmp_path / "e.npz"
    assert main(["embed", str(model), str(photo), "--output", str(out), "--no-progress",
                 "--input-mean", "0", "--input-std", "1"]) == 0
    emb, _ = read_embeddings(out)
    image = open_rgb(photo)
    crop = align_face(image, default_detector().detect(image)[0].landmarks, size).astype(np.float32)
    expected = crop if shape[-1] == 3 else crop.transpose(2, 0, 1)
    np.testing.assert_allclose(emb[0], l2_normalize(expected.reshape(1, -1))[0], atol=1e-6)


def test_an_aligned_crop_of_the_models_size_is_taken_as_it_is(tmp_path):
    from irface.infer import load_model

    embedder = load_model(pixels_model(tmp_path / "p.onnx", [1, 112, 96, 3]))
    assert embedder.input_hw == (112, 96) and embedder.input_size == (112, 96)
    crop = np.random.default_rng(0).integers(0, 256, (112, 96, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(crop).save(tmp_path / "crop.png")
    from irface.infer.photo import faces_from_file

    [face] = faces_from_file(tmp_path / "crop.png", size=embedder.input_size)
    np.testing.assert_array_equal(face.crop, crop)
    # A 112x112 ArcFace crop, declared aligned, loses 8 columns each side: SphereFace's crop.
    square = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(square).save(tmp_path / "square.png")
    [face] = faces_from_file(tmp_path / "square.png", mode="aligned", size=embedder.input_size)
    np.testing.assert_array_equal(face.crop, square[:, 8:-8])


def test_forcing_the_output_and_the_layout(tmp_path, caplog):
    from irface.infer.fingerprint import model_fingerprint
    from irface.infer import load_model

    model = two_outputs(tmp_path / "two.onnx", "scores", "out")  # neither named like an embedding
    auto = load_model(model)
    assert auto.feed.output_name == "scores" and "first of 2" in auto.feed.why["output"]
    chosen = load_model(model, output_name="out")
    assert chosen.embedding_size == 128 and chosen.forced == {"output_name": "out"}
    assert model_fingerprint(chosen) != model_fingerprint(auto)
    assert model_fingerprint(load_model(model, output_name="scores")) == model_fingerprint(auto)
    # Open dimensions everywhere: NCHW 112x112 assumed, NHWC when asked.
    open_dims = pixels_model(tmp_path / "open.onnx", ["n", "a", "b", "c"])
    assert load_model(open_dims).feed.layout == "nchw"
    forced = load_model(open_dims, layout="nhwc")
    assert forced.feed.layout == "nhwc" and forced.input_hw == (112, 112) and forced.forced == {"input_layout": "nhwc"}
    images = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(forced.embed(images), ((images - 127.5) / 127.5).reshape(2, -1), atol=1e-5)


def test_calibrate_keeps_the_forced_output_for_later_runs(tmp_path):
    import json
    import shutil

    model = two_outputs(tmp_path / "two.onnx", "scores", "out")
    people = tmp_path / "people"
    for who in ("lennon", "clapton"):
        shutil.copytree(PHOTOS / who, people / who)
    assert main(["calibrate", str(model), str(people), *IMAGENET, "--output-name", "out", "--json",
                 str(tmp_path / "c.json")]) == 0
    stored = json.loads((tmp_path / "two.onnx.irface.json").read_text())
    assert stored["output_name"] == "out"
    from irface.infer import load_model

    assert load_model(model).feed.output_name == "out"


def _int_input_model(path: Path) -> Path:
    return _graph_model(path, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 112, 112, 3])],
                        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, None])],
                        [helper.make_node("Flatten", ["x"], ["y"])])


def _two_images_model(path: Path) -> Path:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 112, 112]) for n in ("a", "b")]
    return _graph_model(path, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
                        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Flatten", ["s"], ["y"])])


def _image_and_scalar_model(path: Path) -> Path:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112]),
              helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1])]
    return _graph_model(path, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
                        [helper.make_node("Mul", ["x", "gain"], ["s"]), helper.make_node("Flatten", ["s"], ["y"])])


def _map_output_model(path: Path) -> Path:
    return _graph_model(path, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 112, 112])],
                        [helper.make_node("Relu", ["x"], ["y"])])


def _grey_model(path: Path) -> Path:
    return pixels_model(path, [1, 1, 112, 112])


@pytest.mark.parametrize("make, extra, message", [
    (_int_input_model, [], "is not float"),
    (_two_images_model, [], "2 image-like inputs"),
    (_image_and_scalar_model, [], "reads input 'gain' (1) float besides the image"),
    (_map_output_model, [], "no output can be an embedding"),
    (_grey_model, [], "no axis of 3 channels"),
    (lambda p: pixels_model(p, [1, 3, 112, 112]), ["--layout", "nhwc"], "--layout nhwc"),
    (lambda p: pixels_model(p, [1, 3, 112, 112]), ["--output-name", "nope"], "no such output"),
    (lambda p: two_outputs(p, "scores", "out"), ["--output-name", "scores2"], "no such output"),
])
def test_what_cannot_be_fed_is_one_line_naming_the_file(tmp_path, capsys, make, extra, message):
    model = make(tmp_path / "odd.onnx")
    out = tmp_path / "e.npz"
    rc = main(["embed", str(model), str(PHOTOS / "lennon"), "--output", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(model) in err[0] and message in err[0], err
    assert not out.exists()


def test_onnx_flags_on_a_pytorch_model_are_refused(tmp_path, capsys):
    from infer_export_util import save_state_dict

    save_state_dict(tmp_path / "b.pth")
    rc = main(["embed", str(tmp_path / "b.pth"), str(PHOTOS / "lennon"), "--output", str(tmp_path / "e.npz"),
               "--layout", "nhwc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "apply to ONNX models only" in err[0], err


def test_a_verification_bin_is_cut_to_a_model_that_is_not_square(tmp_path, caplog):
    from test_eval_run import make_bin

    from irface.eval.verification import embed_bin
    from irface.infer import load_model

    make_bin(tmp_path / "pairs.bin", n_pairs=3, size=112)
    embedder = load_model(pixels_model(tmp_path / "p.onnx", ["n", 112, 96, 3]), input_mean="0", input_std="1")
    with caplog.at_level(logging.INFO):
        emb, _, issame = embed_bin(embedder.embed, tmp_path / "pairs.bin", flip=False)
    assert emb.shape == (6, 112 * 96 * 3) and len(issame) == 3
    assert any("112x112 images resized to 96x112" in r.getMessage() for r in caplog.records)


def test_decisions_on_declared_shapes_alone():
    from irface.errors import ModelFileError
    from irface.infer.onnx_feed import Port, plan_feed

    f = "m.onnx"
    image = Port("in", "tensor(float)", [1, 3, 112, 112])
    # (E,) is an embedding when the batch is fixed at 1; (batch,) never; (batch, 1) scores never.
    assert plan_feed(f, [image], [Port("e", "tensor(float)", [512])]).embedding_size == 512
    dynamic = Port("in", "tensor(float16)", ["n", 160, 160, 3])
    with pytest.raises(ModelFileError, match="no output can be an embedding"):
        plan_feed(f, [dynamic], [Port("s", "tensor(float)", ["n"]), Port("q", "tensor(float)", ["n", 1])])
    feed = plan_feed(f, [dynamic], [Port("q", "tensor(float)", ["n", 1]), Port("e", "tensor(float)", ["n", 128])])
    assert (feed.layout, feed.height, feed.width, feed.fixed_batch) == ("nhwc", 160, 160, None)
    assert feed.input_dtype is np.float16
    assert feed.output_name == "e" and "only one of 2" in feed.why["output"]
    # Among several (batch, E) outputs the one named like an embedding; an output of unknown rank is a
    # candidate whose E the first run tells.
    outs = [Port("logits", "tensor(float)", ["n", 1000]), Port("fc1", "tensor(float)", ["n", 512])]
    assert plan_feed(f, [image], outs).output_name == "fc1"
    unknown = plan_feed(f, [image], [Port("y", "tensor(float)", [], rank_known=False)])
    assert unknown.output_name == "y" and unknown.embedding_size is None
    # (batch, 112, 112, C) with C open: channels last; one open side: square.
    assert plan_feed(f, [Port("in", "tensor(float)", [1, 112, 112, "c"])], outs).layout == "nhwc"
    side = plan_feed(f, [Port("in", "tensor(float)", [1, 3, 128, "w"])], outs)
    assert (side.height, side.width) == (128, 128) and "square" in side.why["size"]
    with pytest.raises(ModelFileError, match="not .batch, E."):
        feed.to_embeddings(np.zeros((1, 128), np.float32), 4, f)


@pytest.mark.parametrize("argv", [
    ["embed", "m.onnx", "p", "--output", "e.npz"], ["verify", "m.onnx", "a", "b"], ["calibrate", "m.onnx", "p"],
    ["gallery", "build", "p", "--output", "g", "--model", "m.onnx"], ["gallery", "search", "g", "p"], ["serve", "--model", "m.onnx"],
])
def test_every_command_that_opens_a_model_takes_the_feed_flags(argv):
    from irface.cli import build_parser

    args = build_parser().parse_args([*argv, "--layout", "nhwc", "--output-name", "fc1"])
    assert (args.layout, args.output_name) == ("nhwc", "fc1")


def test_a_pruned_model_with_external_weights(tmp_path):
    from irface.infer import load_model

    inner = onnx.load(str(unused_input(tmp_path / "u.onnx")))
    onnx.save(inner, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    images = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    got = load_model(tmp_path / "ext.onnx")
    assert got.feed.dropped == ["unused_mask"]
    np.testing.assert_allclose(got.embed(images), load_model(MODEL).embed(images), atol=1e-5)


def test_without_the_onnx_package_several_inputs_are_one_line(tmp_path, monkeypatch):
    import sys

    from irface.errors import ModelFileError
    from irface.infer import load_model

    model = unused_input(tmp_path / "u.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ModelFileError, match="u.onnx: declares 2 inputs; .* needs the onnx package"):
        load_model(model)
    assert load_model(MODEL).feed.output_name == "output0"  # one input: onnxruntime alone suffices
