"""A shortened `irface demo` (a minute or less): every stage wired, the summary printed, files written."""

import json

import pytest

from irface.cli import main


@pytest.mark.slow
def test_short_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "1", "--ids", "12", "--per-id", "4",
                 "--holdout-ids", "8", "--pairs", "40", "epoch_size=2", "batch_size=16", "num_workers=0",
                 "device=cpu", "--json", str(tmp_path / "demo.json")])
    assert code == 0
    text = capsys.readouterr().out
    for name in ("lfw", "cfp_fp", "agedb_30"):
        assert f"[{name}]Accuracy: " in text and f"[{name}]Accuracy-Flip: " in text
    assert "untrained" in text and "Export:" in text and text.count("Verify:") == 2
    report = json.loads((tmp_path / "demo.json").read_text())
    assert set(report["trained"]) == {"lfw", "cfp_fp", "agedb_30"}
    assert report["train"]["steps"] == 2 * (12 * 4 // 16)
    assert all(c["relative_error"] < 1e-4 for c in report["export"]["checks"])
    assert (out / "model.onnx").is_file() and (out / "data" / "train.rec").is_file()
    assert (out / "run" / "config.yaml").is_file()
    assert [v["truth"] for v in report["verify"]] == [True, False]


def test_demo_refuses_to_overwrite_an_earlier_run(tmp_path, capsys):
    run = tmp_path / "demo" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint-e0001-s00000001.pt").write_bytes(b"x")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier demo run" in err and len(err.strip().splitlines()) == 1
