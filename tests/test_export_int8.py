"""int8 ONNX: static QDQ per-channel quantisation calibrated on faces, checked against fp32."""

import json

import numpy as np
import pytest

from infer_export_util import faces, save_state_dict, torch_embed, write_images
from repo_scripts import load_repo_script
from irface.cli import main
from irface.data import save_bin
from irface.export import ExportOptions, Int8Options, ParityError, export_model
from irface.export.check import cosine_similarity

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_int8_from_a_bin_is_qdq_per_channel_and_close_to_fp32(tmp_path):
    model = save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "calib.bin", faces(40, seed=1), [True] * 20)
    out = tmp_path / "q.onnx"
    report = export_model(tmp_path / "b.pth", out, ExportOptions(int8=Int8Options(tmp_path / "calib.bin", count=32)))
    assert report["precision"] == "int8" and report["calibration"]["images"] == 32
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    conv_scales = [i for i in proto.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert conv_scales, "weights should be quantised per output channel"
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8"
    # Independent check on faces it was not calibrated on: embeddings point the same way as fp32's.
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    test = faces(9, seed=7)
    x = ((test.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    got = sess.run(None, {"data": x})[0]
    cos = cosine_similarity(got, torch_embed(model, test))
    assert cos.min() > 0.98 and not np.allclose(got, torch_embed(model, test), rtol=1e-5)


def test_int8_cli_from_a_folder_with_fixed_batch(tmp_path, capsys):
    save_state_dict(tmp_path / "b.pth")
    write_images(tmp_path / "calib", faces(10, seed=2), [f"id{i % 3}/{i}.png" for i in range(10)])
    out = tmp_path / "q4.onnx"
    assert main(["export", "--ckpt", str(tmp_path / "b.pth"), "--output", str(out), "--int8",
                 "--calib", str(tmp_path / "calib"), "--batch-size", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8_agreement"]["mean_cosine"] > 0.95 and report["checks"] == [{"batch": 4, "shape": [4, 16]}]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == 4


def test_int8_refused_when_it_disagrees(tmp_path):
    save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "calib.bin", faces(8), [True] * 4)
    with pytest.raises(ParityError, match="agree poorly"):
        # an impossible bar: the refusal path
        export_model(tmp_path / "b.pth", tmp_path / "q.onnx", ExportOptions(int8=Int8Options(tmp_path / "calib.bin",
                                                                                           min_cosine=1.01)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pth", "calib.bin"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "no images"),
    (lambda p: None, "no such calibration"),
    (lambda p: p.write_bytes(b"not a pickle"), "verification .bin"),
])
def test_bad_calibration_source_is_one_line(tmp_path, capsys, make, message):
    save_state_dict(tmp_path / "b.pth")
    calib = tmp_path / "calib"
    make(calib)
    assert main(["export", "--ckpt", str(tmp_path / "b.pth"), "--output", str(tmp_path / "q.onnx"), "--int8",
                 "--calib", str(calib)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "q.onnx").exists()


def test_accuracy_report_runs_the_protocol_on_both_models_and_pairs_their_decisions(tmp_path):
    from irface.infer import load_model
    from irface.export.accuracy import compare_accuracy

    save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "c.bin", faces(40, seed=4), [True, False] * 10)
    export_model(tmp_path / "b.pth", tmp_path / "q.onnx", ExportOptions(int8=Int8Options(tmp_path / "c.bin")))
    reference = load_model(tmp_path / "b.pth")
    (entry,) = compare_accuracy(reference, load_model(tmp_path / "q.onnx"), [tmp_path / "c.bin"], 8)
    assert entry["reference"]["pairs"] == entry["exported"]["pairs"] == 20
    assert entry["delta"]["accuracy_flip"] == pytest.approx(
        entry["exported"]["accuracy_flip"] - entry["reference"]["accuracy_flip"])
    d = entry["decisions"]
    assert d["pairs"] == 20 and d["threshold"] == entry["reference"]["threshold"]
    assert d["changed"] == d["now_right"] + d["now_wrong"]
    assert d["delta"] == pytest.approx((d["now_right"] - d["now_wrong"]) / 20)
    # The reference judged at its own best threshold scores that threshold's accuracy.
    assert d["reference_accuracy"] == pytest.approx(entry["reference"]["threshold_accuracy"])
    # The same model on both sides changes nothing.
    (same,) = compare_accuracy(reference, reference, [tmp_path / "c.bin"], 8)
    assert same["decisions"]["changed"] == 0 and same["delta"]["accuracy_flip"] == 0
    # A cache of the reference's embeddings gives the same report and is filled once.
    cache: dict = {}
    first = compare_accuracy(reference, load_model(tmp_path / "q.onnx"), [tmp_path / "c.bin"], 8, reference_cache=cache)
    assert list(cache) == [str(tmp_path / "c.bin")]
    reference.embed = None  # a cached set must not be embedded again
    again = compare_accuracy(reference, load_model(tmp_path / "q.onnx"), [tmp_path / "c.bin"], 8, reference_cache=cache)
    assert json.dumps(first) == json.dumps(again) == json.dumps([entry])
    json.dumps(entry)  # numpy scalars converted


def test_decision_changes_counts_pairs_that_flip_each_way():
    from irface.export.accuracy import decision_changes

    issame = np.array([True, True, False, False])
    ref = np.array([0.5, 1.5, 1.5, 0.5])   # at 1.0: right, wrong, right, wrong
    got = np.array([0.5, 0.5, 0.5, 1.5])   # at 1.0: right, right, wrong, right
    d = decision_changes(ref, got, issame, 1.0)
    assert (d["changed"], d["now_right"], d["now_wrong"]) == (3, 2, 1)
    assert d["reference_accuracy"] == 0.5 and d["exported_accuracy"] == 0.75 and d["delta"] == 0.25


def test_accuracy_report_compares_eval_results_figure_by_figure():
    """evaluate_bin returns TargetResult objects: the report must hold their figures and deltas."""
    from irface.eval import evaluate_embeddings
    from irface.export.accuracy import _delta, _jsonable

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    issame = np.array([True, False] * 10)
    a = _jsonable(evaluate_embeddings("x", emb, issame))
    b = _jsonable(evaluate_embeddings("x", emb + 0.5, issame))
    assert isinstance(a, dict) and "accuracy" in a
    assert _delta(a, b)["accuracy"] == b["accuracy"] - a["accuracy"]


def test_calibration_reads_a_recordio_training_folder(tmp_path):
    # Users calibrate on their training set (train.rec), keeping the .bin sets to measure int8's cost.
    from irface.data.recordio import write_recordio_dataset
    from irface.data.synth import encode
    from irface.export.calibration import load_calibration_images

    images = faces(12, seed=3)
    write_recordio_dataset(tmp_path / "rec", [(i // 4, encode(img, quality=100)) for i, img in enumerate(images)],
                           num_classes=3, image_size=(images.shape[1], images.shape[2]))
    got = load_calibration_images(tmp_path / "rec", count=4, size=images.shape[1])
    assert got.shape == (4,) + images.shape[1:] and got.dtype == np.uint8
    # Spread over the whole set: the first and the last stored face (each nearest its own original).
    dist = np.abs(got[:, None].astype(int) - images[None].astype(int)).mean(axis=(2, 3, 4))
    assert dist.argmin(axis=1)[0] == 0 and dist.argmin(axis=1)[-1] == len(images) - 1
    assert np.array_equal(load_calibration_images(tmp_path / "rec" / "train.rec", 4, images.shape[1]), got)


@pytest.mark.parametrize("form, quantised_conv", [("qdq", "Conv"), ("cpu", "QLinearConv")])
def test_int8_forms_quantise_only_the_blocks_3x3_convs(tmp_path, form, quantised_conv):
    # The stem reads the normalised image, which falls between the steps of any 8-bit grid; the 1x1
    # shortcuts and the FC read the raw residual stream. Kept float they took the demo model's int8
    # error from 3.9e-4 to 1.7e-4 (1 - cosine), for about 1% of IResNet-100's FLOPs.
    save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "calib.bin", faces(24, seed=1), [True] * 12)
    out = tmp_path / f"{form}.onnx"
    report = export_model(tmp_path / "b.pth", out, ExportOptions(int8=Int8Options(tmp_path / "calib.bin", form=form)))
    assert report["int8_form"]["name"] == form and report["calibration"]["method"] == "percentile"
    graph = onnx.load(str(out)).graph
    weights = {i.name: i for i in graph.initializer}

    def float_weights(node):  # weights read straight from a float initializer, no DequantizeLinear
        return node.input[1] in weights and weights[node.input[1]].data_type == onnx.TensorProto.FLOAT

    (stem,) = [n for n in graph.node if "data" in n.input]
    assert stem.op_type == "Conv" and float_weights(stem)
    shortcuts = [n for n in graph.node if n.op_type == "Conv" and float_weights(n)
                 and list(weights[n.input[1]].dims[2:]) == [1, 1]]
    assert len(shortcuts) == 2  # one per stage of the tiny model
    (fc,) = [n for n in graph.node if n.op_type in ("Gemm", "QGemm", "MatMul", "MatMulInteger")]
    assert fc.op_type == "Gemm" and float_weights(fc)
    # The blocks' 3x3 convs (two per block, two blocks) are the quantised ones.
    if form == "cpu":
        assert [n.op_type for n in graph.node].count("QLinearConv") == 4
    else:
        assert len([n for n in graph.node if n.op_type == "Conv" and not float_weights(n)]) == 4


def test_unknown_int8_form_is_refused_before_anything_is_written(tmp_path):
    from irface.errors import ConfigError

    save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "calib.bin", faces(8), [True] * 4)
    with pytest.raises(ConfigError, match="unknown int8 form 'gpu'"):
        export_model(tmp_path / "b.pth", tmp_path / "q.onnx", ExportOptions(int8=Int8Options(tmp_path / "calib.bin", form="gpu")))
    assert not (tmp_path / "q.onnx").exists()


def test_cli_eval_bin_prints_both_accuracies_and_the_changed_decisions(tmp_path, capsys):
    save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "lfw.bin", faces(40, seed=5), [True, False] * 10)
    assert main(["export", "--ckpt", str(tmp_path / "b.pth"), "--output", str(tmp_path / "q.onnx"), "--int8",
                 "--calib", str(tmp_path / "lfw.bin"), "--eval-bin", str(tmp_path / "lfw.bin"),
                 "--eval-batch-size", "8"]) == 0
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if "lfw.bin" in x and "Accuracy-Flip" in x]
    assert len(line) == 1 and "decisions changed" in line[0] and "of 20 decisions" in line[0], out


def _write_model_and_sets(folder, sets):
    """b.pth (the tiny model) and a 20-pair .bin per set name, for the benchmark scripts."""
    save_state_dict(folder / "b.pth")
    for i, name in enumerate(sets):
        save_bin(folder / f"{name}.bin", faces(40, seed=10 + i), [True, False] * 10)


def test_int8_accuracy_benchmark_runs_and_reports_every_row(tmp_path, capsys):
    # benchmarks/int8_accuracy.py is how the README's int8 accuracy figures are made: keep it runnable.
    bench = load_repo_script("benchmarks/int8_accuracy.py")
    _write_model_and_sets(tmp_path, bench.SETS)
    out = tmp_path / "acc.json"
    assert bench.main(["--model", str(tmp_path / "b.pth"), "--calib", str(tmp_path / "lfw.bin"), "--sets",
                       str(tmp_path), "--forms", "qdq", "cpu", "--noise-seeds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["model"], r["set"]) for r in report["rows"]] == (
        [("int8 qdq", s) for s in bench.SETS] + [("int8 cpu", s) for s in bench.SETS]
        + [("fp32 + noise (seed 0)", s) for s in bench.SETS])
    assert 0 < report["noise_relative"] < 1 and "| int8 qdq | lfw | 20 |" in capsys.readouterr().out


def test_protocol_resolution_benchmark_reports_each_noise_level(tmp_path, capsys):
    bench = load_repo_script("benchmarks/protocol_resolution.py")
    _write_model_and_sets(tmp_path, bench.SETS)
    out = tmp_path / "res.json"
    assert bench.main(["--model", str(tmp_path / "b.pth"), "--sets", str(tmp_path), "--levels", "0.5", "0",
                       "--seeds", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["relative"] for r in rows] == [0.5, 0.0] and all(r["seeds"] == 3 for r in rows)
    # No noise cannot move the figure; 50% noise on 20 pairs does.
    assert rows[1]["held"] == 3 and rows[1]["largest_change_points"] == 0
    assert rows[0]["largest_change_points"] > 0


def test_int8_honours_no_fold_bn(tmp_path):
    # --no-fold-bn keeps every BatchNorm in the exported graph, int8 included.
    save_state_dict(tmp_path / "b.pth")
    save_bin(tmp_path / "calib.bin", faces(16, seed=1), [True] * 8)
    counts = {}
    for fold in (True, False):
        out = tmp_path / f"q-{fold}.onnx"
        report = export_model(tmp_path / "b.pth", out, ExportOptions(fold_bn=fold, int8=Int8Options(tmp_path / "calib.bin")))
        assert report["bn_folded"] is fold
        counts[fold] = [n.op_type for n in onnx.load(str(out)).graph.node].count("BatchNormalization")
    assert counts[False] > counts[True]
