"""Training-loader throughput from a `.rec`: read + decode + random flip + uint8 collate.

    PYTHONPATH=src python benchmarks/bench_data.py                      # synthetic 112x112 JPEG .rec
    PYTHONPATH=src python benchmarks/bench_data.py --data /data/ms1mv2 --images 20000 --workers 0 4
    PYTHONPATH=src python benchmarks/bench_data.py --json result.json   # or --json alone: JSON on stdout

The per-worker figure is the loader with `num_workers=0` (everything in one process); with N
workers the total is also printed. Both decoders are measured when simplejpeg is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _loader_rate(folder: Path, batch: int, workers: int, images: int) -> float:
    """`irface bench data`'s measurement: the training loader, prefetched batches drained first."""
    from irface.bench.data import bench_data
    from irface.bench.options import DataOptions

    opts = DataOptions(str(folder), batch_size=batch, steps=max(1, images // batch), warmup=1, workers=workers)
    return bench_data(opts)["images_per_s"]


def _decode_rate(dataset, images: int) -> float:
    from irface.data.images import decode_image

    blobs = [dataset.read(i % len(dataset))[1] for i in range(min(images, len(dataset)))]
    start = time.perf_counter()
    for b in blobs:
        decode_image(b, dataset.image_size)
    return len(blobs) / (time.perf_counter() - start)


def _read_rate(dataset, images: int) -> float:
    n = min(images, len(dataset))
    start = time.perf_counter()
    for i in range(n):
        dataset.read(i)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="RecordIO folder (default: a synthetic 112x112 .rec made for the run)")
    p.add_argument("--images", type=int, default=4096, help="images timed per measurement (default 4096)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128, the seed's)")
    p.add_argument("--workers", type=int, nargs="*", default=[0], help="worker counts to measure (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs per figure (default 3)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="JSON to FILE, or alone: to stdout only")
    args = p.parse_args(argv)

    import torch

    from irface.data import images as image_codec
    from irface.data.recordio import RecordIODataset

    torch.set_num_threads(args.threads)
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json == "-" else print
    tmp = None
    if args.data:
        folder = Path(args.data)
    else:
        from irface.data.synth import write_synthetic

        tmp = tempfile.TemporaryDirectory(prefix="irface-bench-")
        folder = Path(tmp.name)
        ids = max(1, min(args.images, 4096) // 32)
        say(f"making a synthetic .rec of {ids * 32} 112x112 JPEG images in {folder} ...")
        write_synthetic(folder, ids=ids, per_id=32, pairs=0, holdout_ids=0, progress=False)
    dataset = RecordIODataset(folder)
    result = {
        "data": str(args.data or "synthetic 112x112 JPEG"), "images_in_rec": len(dataset),
        "batch": args.batch, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}".strip(", "),
        "python": platform.python_version(), "torch": torch.__version__, "decoders": {},
    }
    try:
        import PIL

        result["pillow"] = PIL.__version__
    except ImportError:
        pass
    result["read_records_per_s"] = round(max(_read_rate(dataset, args.images) for _ in range(max(1, args.repeat))))
    decoders = ["pillow"]
    if image_codec._fast_jpeg():
        decoders.append("simplejpeg")
    saved = image_codec._FAST_JPEG
    try:
        for name in decoders:
            image_codec._FAST_JPEG = False if name == "pillow" else saved
            # Best of `repeat`: on a shared machine the slower runs measure the neighbours.
            best = lambda f, *a: max(f(*a) for _ in range(max(1, args.repeat)))  # noqa: E731
            figures = {"decode_per_s": round(best(_decode_rate, dataset, args.images))}
            for w in args.workers:
                rate = best(_loader_rate, folder, args.batch, w, args.images)
                figures[f"loader_workers_{w}_per_s"] = round(rate)
                if w == 0:
                    figures["per_worker_per_s"] = round(rate)
            result["decoders"][name] = figures
            say(f"{name:>10}: decode {figures['decode_per_s']:,} img/s; "
                + "; ".join(f"loader, {k.split('_')[2]} workers: {v:,} img/s"
                            for k, v in figures.items() if k.startswith("loader_")))
    finally:
        image_codec._FAST_JPEG = saved
    say(f"record reads (no decode): {result['read_records_per_s']:,} records/s")
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
