"""A shortened `irface demo` (a minute or less): every stage wired, the summary printed, files written."""

import json

import pytest

from irface.cli import main


@pytest.mark.slow
def test_short_demo_runs_every_stage(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "1", "--ids", "12", "--per-id", "4",
                 "--holdout-ids", "8", "--pairs", "40", "epoch_size=2", "batch_size=16", "num_workers=0",
                 "device=cpu", "--json", str(tmp_path / "demo.json")])
    assert code == 0 and torch.get_num_threads() == threads  # the demo's thread choice does not leak
    text = capsys.readouterr().out
    for name in ("lfw", "cfp_fp", "agedb_30"):
        assert f"[{name}]Accuracy: " in text and f"[{name}]Accuracy-Flip: " in text
    assert "untrained" in text and "Export:" in text and text.count("Verify:") == 2
    assert "2 of 2 planned epochs" in text
    report = json.loads((tmp_path / "demo.json").read_text())
    assert set(report["trained"]) == {"lfw", "cfp_fp", "agedb_30"}
    assert report["train"]["steps"] == 2 * (12 * 4 // 16)
    assert all(c["relative_error"] < 1e-4 for c in report["export"]["checks"])
    assert (out / "model.onnx").is_file() and (out / "data" / "train.rec").is_file()
    assert (out / "run" / "config.yaml").is_file()
    assert [v["truth"] for v in report["verify"]] == [True, False]
    assert all(v["threshold_source"] == "calibration" for v in report["verify"])
    # Calibrated on its lfw.bin: irface verify and irface cluster read their thresholds from it.
    from irface.infer import load_model

    model = load_model(out / "model.onnx")
    assert model.threshold_source == model.cluster_threshold_source == "calibration"
    assert str(out / "model.onnx.irface.json") in text


def test_demo_refuses_to_overwrite_an_earlier_run(tmp_path, capsys):
    run = tmp_path / "demo" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint-e0001-s00000001.pt").write_bytes(b"x")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier demo run" in err and len(err.strip().splitlines()) == 1


def test_plan_epochs_fits_the_time_left():
    from pathlib import Path

    from irface.demo import STEP_OVERHEAD, DemoSettings, demo_config, plan_epochs

    cfg = demo_config(DemoSettings(out_dir=Path("unused")))
    assert cfg.epoch_size > 3 and cfg.batch_size == 64
    epoch_seconds = (6000 // 64) * 0.1 * STEP_OVERHEAD  # 93 steps of 0.1 s, with the step's overhead
    assert plan_epochs(cfg, 6000, 0.1, 3600.0) == cfg.epoch_size  # time to spare: the config's epochs, no more
    assert plan_epochs(cfg, 6000, 0.1, 3.5 * epoch_seconds) == 3
    assert plan_epochs(cfg, 6000, 0.1, 1.0) == 1  # never fewer than one


def test_pick_threads_sets_a_count_it_measured():
    import torch

    from irface.demo import DemoSettings, demo_config, pick_threads

    before = torch.get_num_threads()
    cfg = demo_config(DemoSettings(), ("image_size=16", "batch_size=4", "network_widths=[4,8,8]"))
    try:
        threads, seconds = pick_threads(cfg)
        assert threads in {1, before} and torch.get_num_threads() == threads and seconds > 0
    finally:
        torch.set_num_threads(before)


def test_untrained_pass_reads_every_nth_pair_of_each_set(tmp_path):
    from irface.data import read_bin, save_bin
    from irface.demo import TARGETS, _write_every_nth_pair, untrained_pair_stride

    assert [untrained_pair_stride(p) for p in (6000, 3000, 600, 40)] == [5, 2, 1, 1]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    for name in TARGETS:
        save_bin(src / f"{name}.bin", [f"{name}-{i}".encode() for i in range(40)], [i % 3 == 0 for i in range(20)])
    _write_every_nth_pair(src, dst, 5)
    images, issame = read_bin(dst / "cfp_fp.bin")
    assert images == [f"cfp_fp-{i}".encode() for p in (0, 5, 10, 15) for i in (2 * p, 2 * p + 1)]
    assert issame.tolist() == [p % 3 == 0 for p in (0, 5, 10, 15)]


def test_cli_defaults_are_the_settings_defaults_and_need_no_torch():
    # The defaults were declared twice (CLI and settings), and a budget change had to edit both.
    import dataclasses
    import subprocess
    import sys

    from irface.cli import build_parser
    from irface.demo_settings import DemoSettings

    args = build_parser().parse_args(["demo"])
    parsed = {**vars(args), "out_dir": args.out, "overrides": tuple(args.overrides)}
    for f in dataclasses.fields(DemoSettings):
        assert parsed[f.name] == getattr(DemoSettings(), f.name), f.name
    probe = "import sys, irface.cli.demo; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
