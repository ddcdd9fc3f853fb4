"""The faster inference defaults the benchmarks chose give the same embeddings as the plain network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infer_export_util import randomise, tiny_model
from irface.export.check import relative_error
from irface.models.fold import ChannelShift, fold_batchnorm
from irface.models import IResNet

THREE_STAGES = dict(layers=[2, 1, 2], widths=[8, 12, 16], embedding_size=16, input_size=16)


def _bns(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("arch", [None, THREE_STAGES])
def test_leading_fold_is_exact_and_removes_every_bn(arch):
    model = tiny_model() if arch is None else randomise(IResNet(**arch), seed=3)
    # Large shifts and mixed-sign scales: the border of the padded convs is where a wrong fold shows.
    with torch.no_grad():
        for block in (b for stage in model.stages for b in stage):
            block.bn1.bias.copy_(torch.randn(block.bn1.bias.shape) * 2)
            block.bn1.weight.mul_(torch.where(torch.rand(block.bn1.weight.shape) < 0.3, -1.0, 1.0))
    folded = fold_batchnorm(model, leading=True)
    x = torch.randn(6, 3, 16, 16) * 2
    with torch.no_grad():
        assert relative_error(folded(x).numpy(), model(x).numpy()) < 1e-5
    assert _bns(folded) == []
    assert any(isinstance(m, ChannelShift) for m in folded.modules())
    assert len(_bns(model)) > 0  # the original is untouched


def test_leading_fold_keeps_a_bn_with_a_vanishing_scale():
    model = randomise(IResNet(**THREE_STAGES), seed=4)
    block = model.layer2[0]
    with torch.no_grad():
        block.bn1.weight[0] = 0.0  # a = 0: no finite shift
    folded = fold_batchnorm(model, leading=True)
    assert len(_bns(folded)) == 1 and isinstance(folded.layer2[0].bn1, torch.nn.BatchNorm2d)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert relative_error(folded(x).numpy(), model(x).numpy()) < 1e-5


def test_leading_fold_exports_to_onnx_with_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from irface.export.onnx_export import export_onnx

    model = tiny_model()
    path = tmp_path / "m.onnx"
    export_onnx(fold_batchnorm(model, leading=True), path, 16)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    with torch.no_grad():
        assert relative_error(got, model(torch.from_numpy(x)).numpy()) < 1e-5


def test_load_model_default_matches_the_plain_network(tmp_path):
    from irface.data.transforms import normalize, to_nchw_tensor
    from irface.infer import load_model

    model = tiny_model()
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    embedder = load_model(path)
    assert embedder.channels_last
    assert _bns(embedder.model) == []
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = model(normalize(to_nchw_tensor(images)).contiguous()).numpy()
    assert relative_error(embedder.embed(images), ref) < 1e-5
    plain = load_model(path, fold_bn=False, channels_last=False)
    assert relative_error(plain.embed(images), ref) < 1e-5


def test_prelu_as_max_is_exact_and_leaves_slopes_above_one(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from irface.export.graph import prelu_as_max
    from irface.export.onnx_export import export_onnx

    model = tiny_model()
    with torch.no_grad():
        model.layer2[0].prelu.weight[3] = 1.5  # one slope above 1: Max(x, s x) would be wrong there
    src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(fold_batchnorm(model, leading=True), src, 16)
    prelus = sum(n.op_type == "PRelu" for n in onnx.load(str(src)).graph.node)
    assert prelu_as_max(src, dst) == prelus - 1
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("PRelu") == 1 and ops.count("Max") == prelus - 1
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]  # noqa: E731
    assert np.array_equal(run(src), run(dst))
