"""benchmarks/cluster_demo.py makes benchmarks/README.md's clustering figures on the demo's identities: keep
its --reuse path runnable, on the folder of a real (tiny) `irface demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

from irface.cli import main as irface_main  # noqa: E402
from irface.errors import ConfigError  # noqa: E402
from tests.repo_scripts import load_repo_script  # noqa: E402

BENCH = load_repo_script("benchmarks/cluster_demo.py")


def tiny_demo(folder: Path) -> Path:
    """A finished `irface demo --out folder`, seconds long (the parameters of tests/test_demo.py)."""
    assert irface_main(["demo", "--out", str(folder), "--minutes", "1", "--ids", "12", "--per-id", "4",
                        "--holdout-ids", "8", "--pairs", "40", "epoch_size=1", "batch_size=16", "num_workers=0",
                        "device=cpu", "--json", str(folder / BENCH.SUMMARY)]) == 0
    return folder


@pytest.mark.slow
def test_reuse_clusters_unseen_people_at_the_default_and_the_calibrated_threshold(tmp_path, capsys):
    demo = tiny_demo(tmp_path / "demo")
    capsys.readouterr()  # the demo's summary
    assert BENCH.main(["--reuse", str(demo), "--out", str(tmp_path / "work"), "--faces", "40",
                       "--max-per-person", "6", "--far", "0.1", "--thresholds"]) == 0
    report = json.loads(capsys.readouterr().out)
    people = report["people"]
    folders = sorted((tmp_path / "work" / "people").iterdir())
    assert len(folders) == people["people"] and sum(len(list(f.iterdir())) for f in folders) == people["faces"] == 40
    # Unseen: none of the people is one of the training identities (0..11) or the held-out pairs' (12..19).
    assert all(int(f.name[2:]) >= BENCH.UNSEEN_FROM for f in folders)
    assert report["image_size"] == 56 and set(report["demo_verification"]) == {"lfw", "cfp_fp", "agedb_30"}
    default, own, verify, strict = report["runs"]
    assert (default["run"], default["threshold"], default["threshold_source"]) == ("default", 0.5, "argument")
    # The demo calibrated its model: irface cluster finds the clustering threshold there by itself.
    assert (own["run"], own["threshold_source"]) == ("model", "calibration") and own["threshold"] >= 0.5
    assert verify["run"] == "verify" and verify["threshold_source"].endswith("on " + str(demo / "data" / "lfw.bin") + ": threshold")
    assert strict["run"] == "far 0.1" and "--far 0.1" in strict["threshold_source"]
    with pytest.raises(ConfigError, match="--reuse"):  # no second demo over a finished one
        BENCH.main(["--out", str(tmp_path)])
    for row in report["runs"]:
        assert row["faces"] == 40 and row["people_true"] == people["people"]
        assert 0 <= row["bcubed"]["f1"] <= 1 and row["peak_rss_mb"] > 0 and row["cpu_s"] > 0


def test_reuse_refuses_a_folder_that_is_no_demo(tmp_path):
    with pytest.raises(ConfigError, match="model.onnx: not found"):
        BENCH.main(["--reuse", str(tmp_path), "--out", str(tmp_path / "work")])
