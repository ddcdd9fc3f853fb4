"""`irface bench`: the commands run on tiny networks and report their fields. Timings are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from irface.cli import main

TINY_ARGS = ["--layers", "1,1", "--widths", "8,16", "--embedding-size", "16", "--input-size", "16"]
QUICK = ["--batch-size", "4", "--steps", "2", "--warmup", "1"]
TIMING_FIELDS = ("name", "images_per_s", "ms_per_step", "ms_min", "peak_memory_mb", "achieved_gflops",
                 "fraction_of_peak", "gflop_per_image", "ratio_to_baseline")


@pytest.fixture(autouse=True)
def _quick_peaks(monkeypatch):
    # The peak is still measured (the field must be there and positive), just briefly.
    monkeypatch.setattr("irface.bench.timing.PEAK_N", 256)
    monkeypatch.setattr("irface.bench.timing.PEAK_SECONDS", 0.02)


@pytest.fixture
def tiny_model_file(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_backbone.state_dict(), path)
    return path


def _json_stdout(capsys, argv) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # nothing but the JSON on stdout


def test_infer_default_reports_every_field(capsys, tiny_model_file):
    report = _json_stdout(capsys, ["bench", "infer", "--model", str(tiny_model_file), *QUICK, "--json"])
    assert report["benchmark"] == "infer"
    (t,) = report["timings"]
    for key in TIMING_FIELDS:
        assert key in t
    assert t["name"] == "default" and t["batch_size"] == 4 and t["steps"] == 2
    assert t["images_per_s"] > 0 and t["ms_per_step"] > 0 and t["peak_memory_mb"] > 0
    assert report["peaks_gflops"]["fp32"] > 0
    assert 0 < t["fraction_of_peak"] == t["fraction_of_fp32_peak"]
    assert report["machine"]["cpu_cores"] >= 1


def test_infer_text_output_names_figures(capsys, tiny_model_file):
    assert main(["bench", "infer", "--model", str(tiny_model_file), *QUICK, "--no-fold-bn"]) == 0
    out = capsys.readouterr().out
    for word in ("images/s", "ms/step", "of peak", "peak MB", "fp32-unfolded-NHWC", "GFLOP"):
        assert word in out


def test_infer_compare_side_by_side_with_agreement(tmp_path, tiny_model_file):
    out = tmp_path / "r.json"
    assert main(["bench", "infer", "--model", str(tiny_model_file), *QUICK, "--compare",
                 "--variants", "default,channels-last,folded-cl,ort-fp32,ort-int8,ort-int8-cpu", "--json",
                 str(out)]) == 0
    report = json.loads(out.read_text())
    names = [t["name"] for t in report["timings"]]
    assert names[0] == "eager-fp32"  # the baseline always runs first
    assert report["timings"][0]["ratio_to_baseline"] == 1.0
    assert all(t["cpu_ms_per_step"] > 0 and t["ratio_cpu_to_baseline"] > 0 for t in report["timings"])
    # side by side on CPU: the peak was also timed in the rounds; the best rate seen is the one used
    measured = report["peaks_measured"]
    assert measured["in_rounds"]["fp32"] > 0
    assert report["peaks_gflops"]["fp32"] == max(measured["in_rounds"]["fp32"], measured["before"]["fp32"])
    for name in ("default", "channels-last", "folded-cl"):
        assert name in names
    agree = report["agreement"]
    # The exact paths give the baseline's embeddings; int8 stays close.
    for name in ("default", "channels-last", "folded-cl"):
        assert agree[name]["min_cosine"] > 0.9999
    # Every path asked for ran: a path that fails to build is skipped with a line, which must not pass here.
    assert report["skipped"] == {}
    assert names == ["eager-fp32", "default", "channels-last", "folded-cl", "ort-fp32", "ort-int8", "ort-int8-cpu"]
    for name in ("ort-int8", "ort-int8-cpu"):
        assert agree[name]["mean_cosine"] > 0.9
    assert report["peaks_gflops"]["int8"] > 0


def test_infer_builds_the_network_when_no_model_given(capsys):
    report = _json_stdout(capsys, ["bench", "infer", *TINY_ARGS, *QUICK, "--no-channels-last", "--json"])
    (t,) = report["timings"]
    assert t["name"] == "fp32-folded-NCHW" and t["extra"]["channels_last"] is False
    assert report["source"]["weights"].startswith("random")
    # 2 x MACs of a 16x16 tiny IResNet, counted from its layers
    assert 0 < report["gflop_per_image"] < 0.01


@pytest.mark.parametrize("runtime, name", [("ort", "ort-fp32"), ("ort-int8-cpu", "ort-int8-cpu")])
def test_infer_runtime_times_that_onnxruntime_path(capsys, runtime, name):
    pytest.importorskip("onnxruntime")
    report = _json_stdout(capsys, ["bench", "infer", *TINY_ARGS, *QUICK, "--runtime", runtime, "--json"])
    (t,) = report["timings"]
    assert t["name"] == name and t["extra"]["runtime"].startswith("onnxruntime") and t["ms_per_step"] > 0


def test_train_compare_reports_every_variant(capsys):
    report = _json_stdout(capsys, ["bench", "train", *TINY_ARGS, *QUICK, "--num-classes", "10", "--compare",
                                   "--variants", "channels-last", "--json"])
    names = [t["name"] for t in report["timings"]]
    assert names == ["eager-fp32", "channels-last"]
    for t in report["timings"]:
        for key in TIMING_FIELDS:
            assert key in t
    # forward + backward = 3 forwards, head included
    assert report["gflop_per_image"] == pytest.approx(3 * (report["gflop_per_image_forward"]
                                                           + report["gflop_per_image_head_forward"]), rel=1e-2)
    assert report["num_classes"] == 10


def test_train_single_with_flags(capsys):
    report = _json_stdout(capsys, ["bench", "train", *TINY_ARGS, *QUICK, "--num-classes", "10", "--precision", "bf16",
                                   "--head", "arcface", "--json"])
    (t,) = report["timings"]
    assert t["name"] == "bf16-NCHW" and t["extra"]["precision"] == "bf16"
    assert "bf16" in report["peaks_gflops"]


def test_train_defaults_are_the_training_config(tmp_path):
    from irface.bench.options import TrainOptions
    from irface.config import TrainConfig

    cfg, opts = TrainConfig(), TrainOptions()
    assert (opts.batch_size, opts.precision, opts.channels_last, opts.compile, opts.head, opts.num_classes,
            opts.sample_rate) == (cfg.batch_size, cfg.precision, cfg.channels_last, cfg.compile, cfg.head,
                                  cfg.num_classes, cfg.sample_rate)


def test_scale_measures_and_computes(capsys):
    report = _json_stdout(capsys, ["bench", "scale", "--classes", "200,2000", "--ranks", "1,2", "--sample-rates", "1",
                                   "--embedding-size", "8", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                                   "--json"])
    measured = report["measured"]
    assert [(r["classes"], r["ranks"]) for r in measured] == [(200, 1), (200, 2), (2000, 1), (2000, 2)]
    assert all(r["ms_per_step"] > 0 for r in measured)
    assert measured[1]["classes_per_rank"] == 100
    paper = report["paper"]
    assert paper["flat_sample_rate"] == {"200": 1.0, "2000": 0.1}  # JSON keys are strings
    rows = {(r["classes"], r["ranks"], r["sample_rate"]): r for r in paper["rows"]}
    # the head's per-rank memory halves with twice the ranks... (8 is always in the computed table)
    assert rows[(2000, 8, 1.0)]["head_gb_per_rank"] < rows[(2000, 1, 1.0)]["head_gb_per_rank"]
    # ...and sampling at the flat rate brings the logits back to the smallest head's
    assert rows[(2000, 1, 0.1)]["logits_gb_per_rank"] == pytest.approx(rows[(200, 1, 1.0)]["logits_gb_per_rank"])


def test_scale_skips_rows_over_the_memory_limit(capsys):
    report = _json_stdout(capsys, ["bench", "scale", "--classes", "10000000", "--ranks", "1", "--sample-rates", "1",
                                   "--max-memory-gb", "0.5", "--json"])
    (row,) = report["measured"]
    assert row["ms_per_step"] is None and "skipped" in row["note"]


def test_head_memory_model():
    from irface.bench.scale import head_memory_bytes, used_classes

    assert used_classes(1000, 8, 0.1) == (125, 12)
    mem = head_memory_bytes(1000, 1, 512, 128, 1.0)
    assert mem["centres"] == 3 * 1000 * 512 * 4
    assert mem["logits"] == 3 * 128 * 1000 * 4


def test_data_without_reader_or_data_is_one_line(capsys, tmp_path):
    code = main(["bench", "data", str(tmp_path / "nothing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("irface bench: error:")


def test_eval_without_pass_or_bin_is_one_line(capsys, tmp_path, tiny_model_file):
    code = main(["bench", "eval", str(tmp_path / "missing.bin"), "--model", str(tiny_model_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("irface bench: error:")


def test_eval_times_a_bin_pass(capsys, tmp_path, tiny_model_file):
    try:
        from irface.eval import evaluate_bin  # noqa: F401
    except ImportError:
        pytest.skip("irface.eval.evaluate_bin not in this install")
    from irface.data.bin import save_bin

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "tiny.bin"
    save_bin(path, images, [i % 2 == 0 for i in range(20)])
    report = _json_stdout(capsys, ["bench", "eval", str(path), "--model", str(tiny_model_file), "--batch-size", "8",
                                   "--json"])
    assert report["pairs"] == 20 and report["images_embedded"] == 80
    assert report["timings"][0]["images_per_s"] > 0


@pytest.mark.parametrize("argv", [
    ["bench", "infer", "--network", "resnet9000"],
    ["bench", "infer", *TINY_ARGS, "--compare", "--variants", "warp-drive"],
    ["bench", "train", *TINY_ARGS, "--batch-size", "1"],
    ["bench", "scale", "--sample-rates", "0"],
    ["bench", "infer", "--layers", "1,1"],
])
def test_bad_arguments_are_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("irface bench: error:")


def test_bench_without_what_prints_help(capsys):
    assert main(["bench"]) == 2


# --- the pieces -------------------------------------------------------------------------------------

def test_count_flops_iresnet100():
    from irface.bench.flops import count_flops
    from irface.models import create_backbone

    with torch.device("meta"):  # shapes only
        model = create_backbone("iresnet100")
    assert count_flops(model, 112) / 1e9 == pytest.approx(24.18, abs=0.01)
    with torch.device("meta"):
        half = create_backbone("iresnet100", input_size=64)
    assert count_flops(half, 64) == pytest.approx(count_flops(model, 112) * (64 / 112) ** 2, rel=1e-6)


def test_interleaved_rounds_rotate_and_count():
    from irface.bench.timing import interleaved_times_ms

    order = []
    steps = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = interleaved_times_ms(steps, torch.device("cpu"), 3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order == list("abc") + list("bca") + list("cab")


def test_ratios_are_to_the_first():
    from irface.bench.timing import make_timing, with_ratios

    a = make_timing("a", 8, [100.0, 200.0, 300.0], 1e9, 100.0, "fp32", 100.0)
    b = make_timing("b", 8, [50.0, 100.0, 150.0], 1e9, 100.0, "fp32", 100.0)
    with_ratios([a, b])
    assert (a.ms_per_step, a.ms_min, a.images_per_s) == (200.0, 100.0, 40.0)
    assert (a.ratio_to_baseline, b.ratio_to_baseline) == (1.0, 2.0)
    assert (a.ratio_min_to_baseline, b.ratio_min_to_baseline) == (1.0, 2.0)
    assert b.fraction_of_peak == pytest.approx(0.8)


def test_calibrate_batchnorm_normalises_what_it_saw(tiny_backbone):
    from irface.bench.inputs import calibrate_batchnorm

    x = torch.randn(64, 3, 16, 16) * 5 + 3
    seen = {}
    model = calibrate_batchnorm(tiny_backbone, x, batch_size=16)
    hook = model.bn1.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(x)
    hook.remove()
    assert not model.training
    out = seen["out"].transpose(0, 1).reshape(8, -1)
    assert out.mean(1).abs().max() < 0.05 and (out.var(1) - 1).abs().max() < 0.1


def test_photo_times_detection_and_photo_to_embedding(capsys):
    realface = Path(__file__).parent / "fixtures" / "realface"
    argv = ["bench", "photo", str(realface / "photos" / "obama" / "obama.jpg"), "--model",
            str(realface / "models" / "mobilefacenet_128d.onnx"), "--sizes", "320x240,640x480", "--steps", "2",
            "--warmup", "0", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["size"] for r in report["rows"]] == ["320x240", "640x480"]
    for row in report["rows"]:
        assert row["faces"] == 1 and 0 < row["detect_ms_min"] <= row["detect_ms"]
        assert 0 < row["photo_to_embedding_ms_min"] <= row["photo_to_embedding_ms"]
