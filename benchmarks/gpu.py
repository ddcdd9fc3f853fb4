"""The GPU benchmark set behind `benchmarks/gpu.sh`: every figure in one JSON, written after each part.

    PYTHONPATH=src python benchmarks/gpu.py --out gpu.json                 # the whole set on cuda
    PYTHONPATH=src python benchmarks/gpu.py --device cpu --tiny --out t.json  # the same code on a tiny network

Parts, in order (each reports ratios to the eager fp32 NCHW baseline measured in the same part):
inference at batch 256 (BN folded, NHWC, fp16 / bf16 weights, torch.compile), a training step at
batch 256 (channels_last, bf16 / fp16 autocast, fused SGD, torch.compile), and the classification
head at 100k / 1M / 10M classes. A part that fails is recorded with its error and the rest still run;
the JSON is rewritten after every part, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
    from irface.bench.infer import InferOptions, bench_infer
    from irface.bench.scale import ScaleOptions, bench_scale
    from irface.bench.train import TrainOptions, bench_train

    tiny = args.tiny
    kw = dict(TINY) if tiny else {}
    batch = 4 if tiny else args.batch_size
    steps, warmup = (1, 1) if tiny else (args.steps, 3)
    infer = InferOptions(batch_size=batch, steps=steps, warmup=warmup, device=args.device, compare=True,
                         variants=["default", "folded-all-cl", "fp16", "bf16", "bf16-compiled"] if args.device != "cpu"
                         else ["default", "folded-all-cl", "bf16"],
                         backbone_kwargs={**kw, **({"embedding_size": 16} if tiny else {})})
    train = TrainOptions(batch_size=batch, steps=steps, warmup=warmup, device=args.device, compare=True,
                         num_classes=1000 if tiny else 85742, embedding_size=16 if tiny else 512,
                         variants=["channels-last", "bf16-cl", "fp16-cl", "bf16-cl-fused", "bf16-cl-compiled"]
                         if args.device != "cpu" else ["channels-last", "bf16-cl"], backbone_kwargs=kw)
    scale = ScaleOptions(classes=[1000, 10000] if tiny else [100_000, 1_000_000, 10_000_000], ranks=[1, 8],
                         sample_rates=[1.0, 0.1], embedding_size=16 if tiny else 512, batch_size=4 if tiny else 128,
                         steps=1 if tiny else 5, warmup=1, device=args.device,
                         max_memory_gb=0.5 if tiny else args.head_memory_gb)
    return [("infer", lambda: bench_infer(infer)), ("train", lambda: bench_train(train)),
            ("scale", lambda: bench_scale(scale))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny network, one step each: checks the script, not the card")
    p.add_argument("--batch-size", type=int, default=256, help="images per step for infer and train (default 256)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    p.add_argument("--head-memory-gb", type=float, default=40.0, help="skip head rows estimated above this (default 40)")
    p.add_argument("--only", nargs="*", default=None, help="run only these parts (infer, train, scale)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from irface.bench.timing import device_info
    from irface.infer.model_file import resolve_device

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
        for t in part.get("timings", []):
            print(f"{name:6s} {t['name']:18s} {t['images_per_s']:>10.1f} images/s  x{t['ratio_to_baseline']:.2f}  "
                  f"{t['fraction_of_peak'] or 0:.0%} of {t['peak_name']} peak  {t['peak_memory_mb'] or 0:.0f} MB")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
