"""benchmarks/cluster_demo.py makes benchmarks/README.md's clustering figures on the demo's identities: keep
its --reuse path runnable, on a demo folder made without training (the fixture MobileFaceNet as its model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

from irface.config import load_config, save_config  # noqa: E402
from irface.data.synth import write_synthetic  # noqa: E402
from irface.demo import REPO_CONFIG  # noqa: E402
from irface.demo_settings import DATA_DIR, MODEL_FILE, RUN_DIR  # noqa: E402
from tests.repo_scripts import ROOT, load_repo_script  # noqa: E402

BENCH = load_repo_script("benchmarks/cluster_demo.py")
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "realface" / "models" / "mobilefacenet_128d.onnx"


def fake_demo(folder: Path, train_ids: int = 5) -> Path:
    """What a finished `irface demo --out folder` leaves that the benchmark reads: model, run config, lfw.bin."""
    data = folder / DATA_DIR
    write_synthetic(data, ids=train_ids, per_id=1, holdout_ids=4, pairs=20, image_size=112, sets=["lfw"])
    (folder / RUN_DIR).mkdir(parents=True)
    save_config(load_config(REPO_CONFIG, [f"data_path={data}", f"num_classes={train_ids}", "seed=3"]),
                folder / RUN_DIR / "config.yaml")
    shutil.copy(FIXTURE_MODEL, folder / MODEL_FILE)
    return folder


@pytest.mark.slow
def test_reuse_clusters_unseen_people_at_the_default_and_the_calibrated_threshold(tmp_path, capsys):
    demo = fake_demo(tmp_path / "demo")
    assert BENCH.main(["--reuse", str(demo), "--out", str(tmp_path / "work"), "--faces", "40",
                       "--max-per-person", "6", "--far", "0.1", "--thresholds"]) == 0
    report = json.loads(capsys.readouterr().out)
    people = report["people"]
    folders = sorted((tmp_path / "work" / "people").iterdir())
    assert len(folders) == people["people"] and sum(len(list(f.iterdir())) for f in folders) == people["faces"] == 40
    # Unseen: none of the people is one of the training identities (0..4) or the held-out pairs' (5..8).
    assert all(int(f.name[2:]) >= BENCH.UNSEEN_FROM for f in folders)
    assert report["image_size"] == 112
    default, own, strict = report["runs"]
    assert (default["run"], default["threshold"], default["threshold_source"]) == ("default", 0.5, "argument")
    assert own["run"] == "model" and own["threshold_source"].startswith("irface calibrate on")
    assert strict["run"] == "far 0.1" and "--far 0.1" in strict["threshold_source"]
    for row in report["runs"]:
        assert row["faces"] == 40 and row["people_true"] == people["people"]
        assert 0 <= row["bcubed"]["f1"] <= 1 and row["peak_rss_mb"] > 0 and row["cpu_s"] > 0


def test_reuse_refuses_a_folder_that_is_no_demo(tmp_path):
    from irface.errors import ConfigError

    with pytest.raises(ConfigError, match="model.onnx: not found"):
        BENCH.main(["--reuse", str(tmp_path), "--out", str(tmp_path / "work")])
