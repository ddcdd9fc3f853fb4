"""The loader benchmark runs end to end and reports its figures as JSON (no timing is asserted)."""

import importlib.util
import json
from pathlib import Path


def test_bench_data_smoke(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data.py"
    spec = importlib.util.spec_from_file_location("bench_data", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--images", "64", "--batch", "16", "--repeat", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout: the JSON only
    assert out["images_in_rec"] == 64 and out["batch"] == 16
    assert out["decoders"]["pillow"]["per_worker_per_s"] > 0
