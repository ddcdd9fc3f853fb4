"""The GPU benchmark set behind `benchmarks/gpu.sh`: every figure in one JSON, written after each part.

    PYTHONPATH=src python benchmarks/gpu.py --out gpu.json                 # the whole set on cuda
    PYTHONPATH=src python benchmarks/gpu.py --device cpu --tiny --out t.json  # the same code on a tiny network

Parts, in order (each reports ratios to the eager fp32 NCHW baseline measured in the same part):
inference at batch 256 (BN folded, NHWC, fp16 / bf16 weights, torch.compile), a training step at
batch 256 (channels_last, bf16 / fp16 autocast, fused SGD), `irface train` itself
end to end on a RecordIO folder (the loader, the real trainer, then `irface eval` of what it wrote),
the loader alone, the classification head at 100k / 1M / 10M classes, and last the compiled training
step (about 2 minutes of compilation). A part that fails is recorded with its error and the rest still run;
the JSON is rewritten after every part, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

TINY = {"layers": [1, 1], "widths": [8, 16], "input_size": 16}


def _write(path: Path, report: dict) -> None:
    from irface.utils import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")


def parts(args: argparse.Namespace) -> list[tuple[str, object]]:
    from irface.bench.infer import bench_infer
    from irface.bench.options import InferOptions, ScaleOptions, TrainOptions
    from irface.bench.scale import bench_scale
    from irface.bench.train import bench_train

    tiny = args.tiny
    kw = dict(TINY) if tiny else {}
    batch = 4 if tiny else args.batch_size
    steps, warmup = (1, 1) if tiny else (args.steps, 3)
    infer = InferOptions(batch_size=batch, steps=steps, warmup=warmup, device=args.device, compare=True,
                         variants=["default", "folded-all-cl", "fp16", "bf16", "bf16-compiled"] if args.device != "cpu"
                         else ["default", "folded-all-cl", "bf16"],
                         backbone_kwargs={**kw, **({"embedding_size": 16} if tiny else {})})
    cuda = args.device != "cpu"
    train_kw = dict(batch_size=batch, steps=steps, warmup=warmup, device=args.device, compare=True,
                    num_classes=1000 if tiny else 85742, embedding_size=16 if tiny else 512, backbone_kwargs=kw)
    train = TrainOptions(**train_kw, variants=args.train_variants or (
        ["channels-last", "bf16-cl", "fp16-cl", "bf16-cl-fused"] if cuda else ["channels-last", "bf16-cl"]))
    # Compiling the training step takes about 2 minutes on a 16-core host, so it runs last, as its own
    # part with its own baseline: a run cut short still has every other figure.
    compiled = TrainOptions(**train_kw, variants=["bf16-cl", "bf16-cl-compiled"] if cuda else ["channels-last"])
    scale = ScaleOptions(classes=[1000, 10000] if tiny else [100_000, 1_000_000, 10_000_000], ranks=[1, 8],
                         sample_rates=[1.0, 0.1], embedding_size=16 if tiny else 512, batch_size=4 if tiny else 128,
                         steps=1 if tiny else 5, warmup=1, device=args.device,
                         max_memory_gb=0.5 if tiny else args.head_memory_gb)
    return [("infer", lambda: bench_infer(infer)), ("train", lambda: bench_train(train)),
            ("trainer", lambda: end_to_end(args)), ("data", lambda: loader_speed(args)),
            ("scale", lambda: bench_scale(scale)), ("train-compiled", lambda: bench_train(compiled))]


def training_data(args: argparse.Namespace) -> Path:
    """`--data`, or a small synthetic RecordIO folder (with lfw.bin) made on first use and kept in `args.data`."""
    if not args.data:
        from irface.data.synth import write_synthetic

        out = Path(tempfile.mkdtemp(prefix="irface-gpu-data-"))
        size = TINY["input_size"] if args.tiny else 112
        write_synthetic(out, ids=16 if args.tiny else 256, per_id=8 if args.tiny else 32, holdout_ids=8,
                        pairs=20, image_size=size, sets=["lfw"], progress=False)
        args.data = str(out)  # the trainer and loader parts share one folder
    return Path(args.data)


def loader_workers() -> int:
    """Loader worker processes: the host's cores but two (the main process and the GPU's feeder), at most 12."""
    return min(12, max(1, (os.cpu_count() or 2) - 2))


def _irface(*argv: str, log_to: Path) -> None:
    """`python -m irface ARGV` as a user runs it; its output goes to `log_to`, its last lines into the error."""
    with open(log_to, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "irface", *argv], stdout=f, stderr=subprocess.STDOUT,
                            env=dict(os.environ)).returncode
    if rc != 0:
        tail = log_to.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"irface {argv[0]} exited {rc}:\n" + "\n".join(tail))


def end_to_end(args: argparse.Namespace) -> dict:
    """`irface train` on the GPU (bf16, NHWC, the loader's workers), its logged images/s, then `irface eval`."""
    data = training_data(args)
    work = Path(tempfile.mkdtemp(prefix="irface-gpu-train-"))
    batch = 8 if args.tiny else args.batch_size
    steps = 4 if args.tiny else args.trainer_steps
    every = 1 if args.tiny else 10
    workers = loader_workers()
    overrides = [f"data_path={data}", f"output_dir={work / 'run'}", f"batch_size={batch}", f"max_steps={steps}",
                 f"log_every={every}", "val_targets=[]", f"num_workers={workers}", "precision=bf16",
                 "channels_last=true", f"device={args.device}", "tensorboard=false"]
    if args.tiny:
        overrides += ["network=iresnet18", "network_layers=[1,1]", "network_widths=[16,32]", "embedding_size=16",
                      f"image_size={TINY['input_size']}", "precision=fp32", "channels_last=false"]
    t0 = time.perf_counter()
    _irface("train", "--config", "configs/lresnet100e_ir_arcface.yaml", *overrides,
            "--json", str(work / "train.json"), log_to=work / "train.out")
    train_s = time.perf_counter() - t0
    logged = [float(x) for x in re.findall(r"images/s ([0-9.]+)", (work / "run" / "train.log").read_text())]
    # The first window holds cuDNN's autotuning and the workers' start; the rest is the steady state.
    steady = logged[1:] or logged
    t0 = time.perf_counter()
    _irface("eval", "--ckpt", str(work / "run"), "--data", str(data), "--targets", "lfw", "--device", args.device,
            "--json", str(work / "eval.json"), log_to=work / "eval.out")
    eval_s = time.perf_counter() - t0
    return {"benchmark": "trainer", "command": "irface train --config configs/lresnet100e_ir_arcface.yaml "
            + " ".join(overrides), "batch_size": batch, "steps": steps, "num_workers": workers,
            "images_per_s_logged": logged, "images_per_s_median": statistics.median(steady) if steady else None,
            "train_wall_s": round(train_s, 1), "eval_wall_s": round(eval_s, 1),
            "train_result": json.loads((work / "train.json").read_text()),
            "eval_result": json.loads((work / "eval.json").read_text())}


def loader_speed(args: argparse.Namespace) -> dict:
    """The training loader alone (decode on workers, uint8 to the GPU, normalise there)."""
    from irface.bench.data import bench_data
    from irface.bench.options import DataOptions

    return bench_data(DataOptions(str(training_data(args)), batch_size=8 if args.tiny else args.batch_size,
                                  steps=2 if args.tiny else 20, warmup=1 if args.tiny else 2, workers=loader_workers(),
                                  device=args.device))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny network, one step each: checks the script, not the card")
    p.add_argument("--batch-size", type=int, default=256, help="images per step for infer and train (default 256)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    p.add_argument("--head-memory-gb", type=float, default=40.0, help="skip head rows estimated above this (default 40)")
    p.add_argument("--train-variants", nargs="*", default=None,
                   help="the train part's variants besides the baseline (default: all but compiled, which train-compiled times)")
    p.add_argument("--trainer-steps", type=int, default=60, help="optimizer steps of the end-to-end `irface train` (default 60)")
    p.add_argument("--data", default=None, help="RecordIO folder (with lfw.bin) for trainer/data; default: synthesised now")
    p.add_argument("--only", nargs="*", default=None, help="run only these parts (infer, train, trainer, data, scale, train-compiled)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from irface.bench.timing import device_info
    from irface.device import resolve_device

    out = Path(args.out)
    report: dict = {"script": "benchmarks/gpu.sh", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "argv": sys.argv[1:], "machine": device_info(resolve_device(args.device)), "parts": {}}
    failed = 0
    for name, run in parts(args):
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        logging.info("gpu.sh: part %s", name)
        try:
            report["parts"][name] = run()
        except Exception as e:  # one part's failure must not cost the others' figures
            failed += 1
            report["parts"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            logging.error("gpu.sh: part %s failed: %s", name, e)
        report["parts"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        _write(out, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    _write(out, report)
    for name, part in report["parts"].items():
        if "images_per_s_median" in part or "ms_per_batch" in part:
            print(f"{name:14s} {part.get('images_per_s_median') or part.get('images_per_s')} images/s")
        for t in part.get("timings", []):
            print(f"{name:14s} {t['name']:18s} {t['images_per_s']:>10.1f} images/s  x{t['ratio_to_baseline']:.2f}  "
                  f"{t['fraction_of_peak'] or 0:.0%} of {t['peak_name']} peak  {t['peak_memory_mb'] or 0:.0f} MB")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
