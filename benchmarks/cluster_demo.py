"""Face clustering on the demo's identities: `irface cluster evaluate` with the model `irface demo` trains,
on synthetic people it never saw.

1. the demo (`irface demo --out OUT/demo --minutes 3 --budget-minutes 4`), or an earlier demo's --out
   folder given with --reuse: its exported model (`model.onnx`) and its run's config (seed, training
   identities, image size);
2. unseen people rendered by irface's synthetic renderer as `irface data synth` renders training
   images (every pose, age, light, occlusion; `irface.data.synth.identity_images`), from identity
   1,000,000 on: the training set holds identities 0..ids-1, the demo's lfw/cfp_fp/agedb_30 pairs the
   next 100 (the demo's default), so none of these people was trained on or picked a threshold. Photos
   per person as in a photo library (Zipf, exponent 2, capped at --max-per-person: `cluster_scale.py`'s
   `people_sizes`), JPEG files at the model's input size in PEOPLE/<person>/ folders: aligned crops;
3. `irface cluster evaluate PEOPLE --model model.onnx --aligned --json`, each in a child process of its
   own (wall time, CPU time, peak resident memory of that process, embedding included), at clustering's
   fixed default; at the model's own clustering threshold, as `irface cluster` finds it (the demo
   calibrates its model on its lfw.bin; for an older demo's folder, `irface calibrate --dry-run`'s there);
   at the verify threshold `irface calibrate` picks there (best accuracy), to show why clustering does not
   use it; at the verify threshold calibrated there for a false accept rate of --far; at each of --thresholds.

    PYTHONPATH=src python benchmarks/cluster_demo.py [--out DIR | --reuse DEMO_DIR] [--faces 2000] [--json F]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cluster_scale import finish, machine, people_sizes  # noqa: E402  (benchmarks/ is not a package)

# Unseen people start here: far beyond the demo's training identities (0..ids-1) and its held-out pairs.
UNSEEN_FROM = 1_000_000
# Clustering links every pair above the threshold, so it needs far fewer false accepts than verifying one
# pair: also the verify threshold calibrated for a false accept rate of 1e-3, and a sweep.
FAR = 0.001
SWEEP = (0.7, 0.8, 0.9)
SUMMARY = "demo.json"  # the demo's --json figures, kept in its --out folder by this script


def irface(*args: str) -> list[str]:
    """The irface command line of this interpreter (the checkout's src first when PYTHONPATH says so)."""
    return [sys.executable, "-m", "irface", *args]


def run_demo(out: Path, minutes: float, budget_minutes: float) -> None:
    """`irface demo` into `out`, its summary's figures kept as out/demo.json."""
    from irface.demo_settings import MODEL_FILE
    from irface.errors import ConfigError

    if (out / MODEL_FILE).exists():
        raise ConfigError(f"{out}: holds a finished demo; pass --reuse {out} to cluster with it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(irface("demo", "--out", str(out), "--minutes", str(minutes), "--budget-minutes",
                          str(budget_minutes), "--json", str(out / SUMMARY)), check=True)


def demo_setup(demo_dir: Path) -> dict[str, Any]:
    """What the clustering needs from a demo's --out folder: the model, the data folder, seed, training ids."""
    from irface.config import load_config
    from irface.demo_settings import MODEL_FILE, RUN_DIR
    from irface.errors import ConfigError

    model, config = demo_dir / MODEL_FILE, demo_dir / RUN_DIR / "config.yaml"
    for path in (model, config):
        if not path.is_file():
            raise ConfigError(f"{path}: not found; --reuse takes the --out folder of a finished 'irface demo'")
    cfg = load_config(config)
    if cfg.num_classes >= UNSEEN_FROM:
        raise ConfigError(f"{config}: {cfg.num_classes} training identities reach the unseen ones ({UNSEEN_FROM:,} on)")
    return {"model": model, "data": Path(cfg.data_path), "seed": cfg.seed, "train_ids": cfg.num_classes}


def write_people(root: Path, faces: int, max_per_person: int, seed: int, size: int) -> dict[str, int]:
    """PEOPLE/<person>/<k>.jpg: `faces` photos of unseen people (Zipf counts), rendered at `size` x `size`
    at the demo's sharpness (shapes drawn at the image size). Rewritten from scratch each run."""
    from irface.data.synth import identity_images

    counts = people_sizes(faces, np.random.default_rng([seed, UNSEEN_FROM]), cap=max_per_person)
    plan = {UNSEEN_FROM + i: int(c) for i, c in enumerate(counts)}
    if root.exists():
        shutil.rmtree(root)
    made: dict[int, int] = {}
    for person, data in identity_images(seed, plan, size, render_size=size):
        folder = root / f"id{person}"
        folder.mkdir(parents=True, exist_ok=True)
        k = made.get(person, 0)
        (folder / f"{k:04d}.jpg").write_bytes(data)
        made[person] = k + 1
    return {"people": len(counts), "faces": int(counts.sum()), "photographed_once": int((counts == 1).sum()),
            "most_photos": int(counts.max())}


def measured(cmd: list[str]) -> tuple[str, dict[str, float]]:
    """Run `cmd`; its stdout, and its wall time, CPU time (user + system, all threads) and peak resident
    memory (ru_maxrss of that child alone, through wait4)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {child.returncode}")
    return stdout, {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                    "peak_rss_mb": round(usage.ru_maxrss / 1024)}


@functools.lru_cache(maxsize=None)
def _dry_run(model: Path, pairs: Path, far: Optional[float]) -> dict[str, Any]:
    """`irface calibrate --dry-run --json`'s report, once per model, pairs and FAR (both thresholds are in it)."""
    cmd = irface("calibrate", str(model), str(pairs), "--dry-run", "--json") + (["--far", str(far)] if far else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def calibrated(model: Path, data: Path, far: Optional[float] = None, key: str = "threshold") -> tuple[float, str]:
    """`irface calibrate --dry-run` on the demo's lfw.bin: its `key` (the verify threshold: the best-accuracy
    one, or with `far` the lowest whose false accept rate is at most `far`; or the clustering threshold)."""
    pairs = data / "lfw.bin"
    return float(_dry_run(model, pairs, far)[key]), f"irface calibrate{f' --far {far}' if far else ''} on {pairs}: {key}"


def model_threshold(model: Path, data: Path) -> tuple[Optional[float], str]:
    """The model's own clustering threshold: what `irface cluster` finds (None: `evaluate` finds it itself:
    the calibration the demo wrote beside its model), else (an older demo's folder) `irface calibrate
    --dry-run`'s on the demo's lfw.bin, the same."""
    from irface.infer import load_model
    from irface.models.metadata import CLUSTER_THRESHOLD_KEY

    embedder = load_model(model)
    if embedder.cluster_threshold is not None:
        return None, str(embedder.cluster_threshold_source)
    return calibrated(model, data, key=CLUSTER_THRESHOLD_KEY)


def evaluate(model: Path, people: Path, threshold: Optional[float]) -> dict[str, Any]:
    cmd = irface("cluster", "evaluate", str(people), "--model", str(model), "--aligned", "--json", "--no-progress")
    if threshold is not None:
        cmd += ["--threshold", repr(threshold)]
    stdout, cost = measured(cmd)
    r = json.loads(stdout)
    pw, b3 = r["pairwise"], r["bcubed"]
    return {"threshold": round(r["threshold"], 4), "threshold_source": r["threshold_source"], **cost,
            "faces": r["faces"], "people_found": r["people_found"], "people_true": r["people_true"],
            "noise_fraction": round(r["noise_fraction"], 4),
            "bcubed": {k: round(b3[k], 4) for k in ("precision", "recall", "f1")},
            "pairwise": {k: round(pw[k], 4) for k in ("precision", "recall", "f1")}}


def main(argv=None) -> int:
    from irface.cluster.settings import DEFAULT_THRESHOLD

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("cluster_demo_out"),
                   help="work folder: the demo (OUT/demo), the people (OUT/people)")
    p.add_argument("--reuse", type=Path, metavar="DEMO_DIR", help="an earlier 'irface demo --out DEMO_DIR': no training")
    p.add_argument("--minutes", type=float, default=3.0, help="the demo's training minutes at most (default 3)")
    p.add_argument("--budget-minutes", type=float, default=4.0, help="the demo's whole budget (default 4)")
    p.add_argument("--faces", type=int, default=2000, help="photos of unseen people (default 2000)")
    p.add_argument("--max-per-person", type=int, default=50, help="most photos of one person (default 50)")
    p.add_argument("--far", type=float, default=FAR,
                   help=f"also at the threshold calibrated for this false accept rate (default {FAR:g}; 0: not)")
    p.add_argument("--thresholds", type=float, nargs="*", default=list(SWEEP),
                   help=f"also at these thresholds (default {' '.join(map(str, SWEEP))})")
    p.add_argument("--json", metavar="FILE", help="also write the report here")
    args = p.parse_args(argv)

    demo_dir = args.reuse or args.out / "demo"
    if args.reuse is None:
        run_demo(demo_dir, args.minutes, args.budget_minutes)
    setup = demo_setup(demo_dir)
    from irface.infer import load_model

    size = load_model(setup["model"]).input_size
    t0 = time.perf_counter()
    people = write_people(args.out / "people", args.faces, args.max_per_person, setup["seed"], size)
    people["render_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"people": people}), file=sys.stderr, flush=True)
    report: dict[str, Any] = {"machine": machine(), "demo": str(demo_dir), "model": str(setup["model"]),
                              "image_size": size, "unseen_from": UNSEEN_FROM, "people": people, "runs": []}
    summary = demo_dir / SUMMARY
    if summary.is_file():  # the demo's own verification figures, when its summary was kept
        trained = json.loads(summary.read_text()).get("trained", {})
        report["demo_verification"] = {k: round(v["accuracy"], 4) for k, v in trained.items()}
    runs: list[tuple[str, Optional[float], Optional[str]]] = [
        ("default", DEFAULT_THRESHOLD, None), ("model", *model_threshold(setup["model"], setup["data"])),
        ("verify", *calibrated(setup["model"], setup["data"]))]
    if args.far:
        runs.append((f"far {args.far:g}", *calibrated(setup["model"], setup["data"], args.far)))
    runs += [("sweep", t, None) for t in args.thresholds]
    for label, threshold, source in runs:
        row = {"run": label, **evaluate(setup["model"], args.out / "people", threshold)}
        if threshold is not None and source:
            row["threshold_source"] = source
        report["runs"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
