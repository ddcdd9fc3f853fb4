"""The loader benchmark runs end to end and reports its figures as JSON (no timing is asserted)."""

import json

from repo_scripts import load_repo_script


def test_bench_data_smoke(tmp_path, capsys):
    bench = load_repo_script("benchmarks/bench_data.py")
    assert bench.main(["--images", "64", "--batch", "16", "--repeat", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout: the JSON only
    assert out["images_in_rec"] == 64 and out["batch"] == 16
    assert out["decoders"]["pillow"]["per_worker_per_s"] > 0


def test_bench_data_times_batches_made_after_the_prefetch_queue(tmp_path):
    # The loader's workers prefetch 2 batches each while the warm-up runs; timing those would report
    # how fast a queue is read, not how fast images are decoded (50,000 images/s on an H200 machine).
    from irface.bench.data import bench_data
    from irface.bench.options import DataOptions
    from irface.data.synth import write_synthetic

    write_synthetic(tmp_path, ids=8, per_id=16, holdout_ids=2, pairs=0, image_size=16, progress=False)
    report = bench_data(DataOptions(str(tmp_path), batch_size=4, steps=4, warmup=0, workers=2))
    assert report["warmup"] >= 2 * 2  # every worker's prefetched batches drained before timing
    assert report["steps"] == 4 and report["prefetched_timed"] is False
