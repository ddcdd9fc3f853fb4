"""Each export format: written only after its parity check, same embeddings as PyTorch, metadata where it fits."""

import json

import numpy as np
import pytest
import torch

from infer_export_util import TINY, save_checkpoint, save_state_dict, tiny_model, torch_embed, faces
from irface.cli import main
from irface.export import ExportOptions, ParityError, export_model, relative_error
from irface.models.fold import fold_batchnorm
from irface.export.check import random_input

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _ref(model, batch):
    x = random_input(batch, TINY["input_size"], seed=123)
    with torch.no_grad():
        return x, model(torch.from_numpy(x)).numpy()


def test_fold_batchnorm_matches_and_removes_bns():
    model = tiny_model()
    folded = fold_batchnorm(model)
    x = torch.from_numpy(random_input(5, 16))
    with torch.no_grad():
        assert relative_error(folded(x).numpy(), model(x).numpy()) < 1e-5
    bns = [m for m in folded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2  # only the blocks' leading BNs (before a padded conv) remain
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.parametrize("batch_size", [None, 3])
def test_onnx_parity_contract_and_metadata(tmp_path, batch_size):
    model = save_checkpoint(tmp_path / "ckpt.pt", threshold=0.41, cluster_threshold=0.73)
    out = tmp_path / "m.onnx"
    report = export_model(tmp_path / "ckpt.pt", out, ExportOptions("onnx", batch_size=batch_size))
    assert [c["batch"] for c in report["checks"]] == ([1, 7] if batch_size is None else [3])
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["input_mean"] == "127.5" and meta["input_std"] == "127.5" and meta["input_color"] == "RGB"
    assert float(meta["threshold"]) == pytest.approx(0.41) and float(meta["cluster_threshold"]) == pytest.approx(0.73)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "data" and outp.name == "embedding"
    assert inp.shape[1:] == [3, 16, 16] and outp.shape[1] == 16
    assert isinstance(inp.shape[0], str) == (batch_size is None)
    for batch in ([1, 7, 2] if batch_size is None else [3]):
        x, ref = _ref(model, batch)
        got = sess.run(None, {"data": x})[0]
        assert got.shape == (batch, 16)
        assert relative_error(got, ref) < 1e-4  # un-normalised, like PyTorch


def test_onnx_fp16_keeps_float32_io(tmp_path):
    model = save_state_dict(tmp_path / "b.pth")
    out = tmp_path / "h.onnx"
    report = export_model(tmp_path / "b.pth", out, ExportOptions(fp16=True))
    assert report["precision"] == "fp16"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"
    x, ref = _ref(model, 4)
    err = relative_error(sess.run(None, {"data": x})[0], ref)
    assert 0 < err < 1e-2
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load's notice in this test's own call
def test_torchscript_parity_and_metadata(tmp_path):
    model = save_checkpoint(tmp_path / "ckpt.pt", threshold=0.5)
    out = tmp_path / "m.ts"
    export_model(tmp_path / "ckpt.pt", out, ExportOptions("torchscript"))
    extra = {"irface.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["irface.json"])["threshold"] == "0.5"
    for batch in (1, 7):
        x, ref = _ref(model, batch)
        with torch.no_grad():
            assert relative_error(loaded(torch.from_numpy(x)).numpy(), ref) < 1e-4


def test_pth_is_the_bare_common_layout(tmp_path):
    model = save_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "backbone.pth"
    export_model(tmp_path / "ckpt.pt", out)
    state = torch.load(out, weights_only=True)
    assert set(state) == set(model.state_dict())  # no wrapper dict, no prefixes
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = type(model)(**TINY).eval()
    fresh.load_state_dict(state, strict=True)
    imgs = faces(3)
    np.testing.assert_allclose(torch_embed(fresh, imgs), torch_embed(model, imgs), rtol=0, atol=0)


def test_safetensors_roundtrip_with_metadata_and_fp16(tmp_path):
    from safetensors import safe_open

    model = save_checkpoint(tmp_path / "ckpt.pt", threshold=0.3)
    out = tmp_path / "m.safetensors"
    export_model(tmp_path / "ckpt.pt", out, ExportOptions(fp16=True))
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["threshold"] == "0.3"
        assert f.get_tensor("conv1.weight").dtype == torch.float16
    from irface.models.loading import load_backbone

    back, _ = load_backbone(out)
    x, ref = _ref(model, 7)
    with torch.no_grad():
        assert relative_error(back.eval()(torch.from_numpy(x)).numpy(), ref) < 1e-2


def test_failed_parity_leaves_no_file_and_exits_1(tmp_path, monkeypatch, capsys):
    save_state_dict(tmp_path / "b.pth")
    out = tmp_path / "bad.onnx"
    out_ts = tmp_path / "bad.pt"

    def broken_fold(model):
        model = fold_batchnorm(model)
        with torch.no_grad():
            model.fc.bias.add_(1.0)  # a wrong export
        return model

    monkeypatch.setattr("irface.export.api.fold_batchnorm", broken_fold)
    with pytest.raises(ParityError, match="relative error"):
        export_model(tmp_path / "b.pth", out)
    assert main(["export", "--ckpt", str(tmp_path / "b.pth"), "--output", str(out_ts)]) == 1
    assert "relative error" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pth"]  # no output, no temporary left


def test_cli_export_json_and_format_from_suffix(tmp_path, capsys):
    save_state_dict(tmp_path / "b.pth")
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(tmp_path / "b.pth"), "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert report["format"] == "onnx" and report["batch"] == "dynamic"
    assert all(c["relative_error"] < 1e-4 for c in report["checks"])
    assert main(["export", "--ckpt", str(tmp_path / "b.pth"), "--output", str(tmp_path / "s.onnx"),
                 "--batch-size", "2", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["batch"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--output", "x.onnx", "--format", "torchscript"], "must not end in .onnx"),
    (["--output", "x.bin"], "cannot tell the format"),
    (["--output", "x.pt", "--int8", "--calib", "c"], "needs --format onnx"),
    (["--output", "x.onnx", "--int8"], "needs --calib"),
    (["--output", "x.onnx", "--int8", "--fp16", "--calib", "c"], "exclude each other"),
    (["--output", "x.onnx", "--opset", "7"], "too old"),
    (["--output", "x.onnx", "--network", "iresnet50"], "not iresnet50"),
])
def test_cli_export_refuses_bad_requests_in_one_line(tmp_path, capsys, monkeypatch, argv, message):
    save_state_dict(tmp_path / "b.pth")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--ckpt", "b.pth", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pth"]


@pytest.mark.faults
@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"hello, not weights", "not a PyTorch weights")])
def test_cli_export_bad_model_file(tmp_path, capsys, content, message):
    src = tmp_path / "model.pth"
    if content is not None:
        src.write_bytes(content)
    assert main(["export", "--ckpt", str(src), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_seed_style_wrapper(tmp_path, monkeypatch, capsys):
    from repo_scripts import load_repo_script

    wrapper = load_repo_script("export.py")
    save_state_dict(tmp_path / "b.pth")
    monkeypatch.chdir(tmp_path)
    assert wrapper.main(["--ckpt_file", "b.pth", "--file_name", "seed", "--file_format", "PTH"]) == 0
    assert wrapper.main(["--ckpt_file", "b.pth", "--file_name", "seed.onnx", "--file_format", "onnx"]) == 0
    assert (tmp_path / "seed.pth").exists() and (tmp_path / "seed.onnx").exists()
    assert wrapper.main(["--ckpt_file", "b.pth", "--file_name", "seed", "--file_format", "MINDIR"]) == 2
    assert "MindSpore format" in capsys.readouterr().err
    assert not (tmp_path / "seed.mindir").exists()
