"""Photos/s of `irface embed` in one process against `irface embed --ray` on a local Ray, and the
per-stage costs the 100 M photo plan in docs/scaling.md is computed from.

Makes a folder of PHOTOS photos (the 21 realface fixtures copied round-robin into their identity
folders), then in interleaved rounds:
- one process: `embed_sources` (what `irface embed` runs; the model and the detector use every core);
- Ray: `embed_to_shards` (what `irface embed --ray` runs) on a local Ray of --cpus CPUs started once
  before the rounds (its start is reported apart), each round into a new output folder; the time
  includes the driver's model check, the actor's start and the pipeline;
- the Ray stages alone, in this process on one thread: `shard_faces` (read, decode, detect, align one
  shard, as a Ray task runs it) per photo, and the model's forward per face (as the actor runs it).

    PYTHONPATH=src python benchmarks/ray_embed.py [--photos 105] [--rounds 2] [--cpus 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from irface.bench.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "realface"
MODEL = str(FIXTURES / "models" / "mobilefacenet_128d.onnx")


def make_photos(folder: Path, count: int) -> Path:
    originals = sorted(p for p in (FIXTURES / "photos").rglob("*") if p.is_file())
    for i in range(count):
        src = originals[i % len(originals)]
        dest = folder / src.parent.name / f"{i:06d}_{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    return folder


def one_process(photos: Path) -> float:
    from irface.infer import load_model
    from irface.infer.embed import embed_sources
    from irface.infer.images import collect_faces

    model = load_model(MODEL, device="cpu")
    sources = collect_faces([photos], model.input_size)
    start = time.perf_counter()
    embed_sources(model, sources, progress=False)
    return time.perf_counter() - start


def on_ray(photos: Path, output: Path, shard_size: int) -> float:
    from irface.infer.ray_embed import embed_to_shards

    start = time.perf_counter()
    embed_to_shards({"path": MODEL, "device": "cpu"}, [photos], output, shard_size=shard_size, progress=False)
    return time.perf_counter() - start


def stages(photos: Path, shard_size: int) -> dict[str, float]:
    """ms per photo of the detection task's work and ms per face of the model's forward, one thread."""
    import torch

    from irface.infer import load_model
    from irface.infer.images import collect_faces
    from irface.infer.ray_embed import EmbedShards, ShardJob, shard_faces

    torch.set_num_threads(1)
    model = load_model(MODEL, device="cpu")
    names = [s.name for s in collect_faces([photos], model.input_size)][:shard_size]
    job = ShardJob("unused", {"path": MODEL, "device": "cpu"}, model.input_size, model.embedding_size)
    shard_faces(names[:2], job)  # the detector's session is made once per worker
    start, cpu = time.perf_counter(), time.process_time()
    crops, _ = shard_faces(names, job)
    task = (time.perf_counter() - start, time.process_time() - cpu)
    actor = EmbedShards(job)
    actor.embed(crops[:8])
    start, cpu = time.perf_counter(), time.process_time()
    actor.embed(crops)
    forward = (time.perf_counter() - start, time.process_time() - cpu)
    # CPU time is what a loaded machine inflates least (the wall time waits for the other processes).
    return {"task_ms_per_photo": round(1000 * task[0] / len(names), 1),
            "task_cpu_ms_per_photo": round(1000 * task[1] / len(names), 1),
            "actor_ms_per_face": round(1000 * forward[0] / len(crops), 2),
            "actor_cpu_ms_per_face": round(1000 * forward[1] / len(crops), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=105)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--shard-size", type=int, default=15)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    import ray

    report: dict = {"photos": args.photos, "ray_cpus": args.cpus, "shard_size": args.shard_size,
                    "load_before": os.getloadavg()[0],
                    "cpu": cpu_model()}
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp) / "photos", args.photos)
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        report["ray_start_s"] = round(time.perf_counter() - start, 2)
        single, distributed = [], []
        for r in range(args.rounds):
            single.append(one_process(photos))
            distributed.append(on_ray(photos, Path(tmp) / f"out{r}", args.shard_size))
            print(f"round {r}: one process {single[-1]:.1f} s, Ray {distributed[-1]:.1f} s", flush=True)
        ray.shutdown()
        report["stages_one_thread"] = stages(photos, args.shard_size)
    report.update({
        "one_process_s": [round(t, 2) for t in single], "ray_s": [round(t, 2) for t in distributed],
        "one_process_photos_per_s": round(args.photos / statistics.median(single), 2),
        "ray_photos_per_s": round(args.photos / statistics.median(distributed), 2),
        "ray_over_one_process": round(statistics.median(single) / statistics.median(distributed), 2),
        "load_after": os.getloadavg()[0]})
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
