"""`load_model`: every model file gives the same embeddings through one `Embedder.embed` API."""

import numpy as np
import pytest
import torch

from infer_export_util import faces, save_checkpoint, save_state_dict, torch_embed
from irface.errors import ModelFileError
from irface.export import ExportOptions, export_model, relative_error
from irface.infer import load_model

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name, kwargs, tol", [
    ("m.onnx", {}, 1e-4), ("m4.onnx", {"batch_size": 4}, 1e-4), ("m.pt", {}, 1e-4), ("m.pth", {}, 1e-5),
    ("m.safetensors", {}, 1e-5), ("h.onnx", {"fp16": True}, 1e-2),
])
def test_every_format_embeds_like_pytorch(tmp_path, name, kwargs, tol):
    model = save_checkpoint(tmp_path / "ckpt.pt", threshold=0.35, cluster_threshold=0.75)
    export_model(tmp_path / "ckpt.pt", tmp_path / name, ExportOptions(**kwargs))
    embedder = load_model(tmp_path / name)
    assert (embedder.input_size, embedder.embedding_size) == (16, 16)
    images = faces(7)  # 7 also exercises the padded tail of a fixed batch of 4
    got = embedder.embed(images)
    assert got.dtype == np.float32 and got.shape == (7, 16)
    assert relative_error(got, torch_embed(model, images)) < tol
    bare = name.endswith(".pth")  # a bare state dict holds no threshold
    assert embedder.threshold == (None if bare else 0.35)
    assert (embedder.cluster_threshold, embedder.cluster_threshold_source) == ((None, None) if bare else (0.75, "model"))


def test_checkpoint_folding_is_on_by_default_and_exact(tmp_path):
    model = save_checkpoint(tmp_path / "ckpt.pt", threshold=0.2, cluster_threshold=0.6)
    folded, plain = load_model(tmp_path / "ckpt.pt"), load_model(tmp_path / "ckpt.pt", fold_bn=False)
    assert (folded.threshold, folded.cluster_threshold) == (0.2, 0.6)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.model.modules())
    images = faces(3)
    assert relative_error(folded.embed(images), torch_embed(model, images)) < 1e-5
    np.testing.assert_allclose(plain.embed(images), torch_embed(model, images), rtol=1e-5, atol=1e-6)


def test_a_bad_stored_threshold_is_ignored(tmp_path):
    save_checkpoint(tmp_path / "ckpt.pt", threshold=7.0)
    assert load_model(tmp_path / "ckpt.pt").threshold is None


def test_wrong_kind_of_model_files(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(ModelFileError, match="not a PyTorch weights file"):
        load_model(tmp_path / "notes.pth")
    torch.save({"a": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="not an IResNet"):
        load_model(tmp_path / "other.pth")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(ModelFileError, match="not a loadable ONNX"):
        load_model(tmp_path / "junk.onnx")
    # A valid ONNX model that is not a face embedder (a classifier on vectors).
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "vec.onnx")
    with pytest.raises(ModelFileError, match="not a face embedding model"):
        load_model(tmp_path / "vec.onnx")
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "missing.onnx")


def test_wrong_image_size_is_refused(tmp_path):
    save_state_dict(tmp_path / "b.pth")
    with pytest.raises(ModelFileError, match="16x16"):
        load_model(tmp_path / "b.pth").embed(faces(2, size=32))
