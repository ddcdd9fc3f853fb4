"""`irface bench photo`: a photo to faces and embeddings, as `irface embed` runs it, at several photo sizes.

For each size (`PhotoOptions.sizes`) the photo is resized to it and two steps are timed in
interleaved rounds: detection alone (`Detector.detect` on the decoded pixels) and the whole path from the
JPEG file to the embedding of its largest face (`faces_from_file`: decode, EXIF, detect, align; then
`Embedder.embed`). The detector and the model are the library's own, loaded as the commands load them.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from irface.bench.options import PhotoOptions
from irface.errors import ConfigError, DataError


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`640x480,1280x960` -> [(640, 480), (1280, 960)] (width x height)."""
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--sizes: expected WIDTHxHEIGHT[,WIDTHxHEIGHT...], got '{text}'") from None
        if w < 32 or h < 32:
            raise ConfigError(f"--sizes: {part} is too small (32x32 at least)")
        sizes.append((w, h))
    return sizes


def bench_photo(opts: PhotoOptions) -> dict[str, Any]:
    """Median (and minimum, and median CPU) ms per photo of detection and of photo -> embedding, for each size."""
    import torch

    from irface.bench.timing import Step, cpu_times_of, device_info, interleaved_times_ms
    from irface.detect import load_detector
    from irface.infer.images import open_rgb
    from irface.device import resolve_device
    from irface.infer.model_file import load_model
    from irface.infer.photo import faces_from_file

    photo, model, steps, warmup, det_size = opts.photo, opts.model, opts.steps, opts.warmup, opts.det_size
    sizes = parse_sizes(opts.sizes)
    if steps < 1 or warmup < 0:
        raise ConfigError("--steps must be positive and --warmup not negative")
    dev = resolve_device(opts.device)
    detector = load_detector(det_size=det_size, device=str(dev))
    embedder = load_model(model, device=dev)
    original = Image.fromarray(open_rgb(photo))
    rows = []
    with tempfile.TemporaryDirectory(prefix="irface-bench-photo-") as tmp:
        steps_by_name: dict[str, Step] = {}
        found: dict[tuple[int, int], int] = {}
        for w, h in sizes:
            path = Path(tmp) / f"photo_{w}x{h}.jpg"
            original.resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
            pixels = open_rgb(path)
            found[(w, h)] = len(detector.detect(pixels))
            if not found[(w, h)]:
                raise DataError(f"{photo}: no face found at {w}x{h}; benchmark a photo with a face")

            def detect(pixels=pixels):
                detector.detect(pixels)

            def end_to_end(path=path):
                face = faces_from_file(path, mode="detect", detector=detector, size=embedder.input_size)[0]
                embedder.embed(face.crop[None])

            steps_by_name[f"detect {w}x{h}"] = detect
            steps_by_name[f"photo->embedding {w}x{h}"] = end_to_end
        # "N faces found; using the largest" once per call would drown the report.
        photo_log = logging.getLogger("irface.infer.photo")
        level = photo_log.level
        photo_log.setLevel(logging.ERROR)
        try:
            for step in steps_by_name.values():
                for _ in range(warmup):
                    step()
            times = interleaved_times_ms(steps_by_name, dev, steps)
        finally:
            photo_log.setLevel(level)
    for w, h in sizes:
        det, e2e = times[f"detect {w}x{h}"], times[f"photo->embedding {w}x{h}"]
        # CPU time (all threads of this process) is what a loaded machine inflates least.
        rows.append({"size": f"{w}x{h}", "faces": found[(w, h)],
                     "detect_ms": round(statistics.median(det), 2), "detect_ms_min": round(min(det), 2),
                     "detect_cpu_ms": round(statistics.median(cpu_times_of(det)), 2),
                     "photo_to_embedding_ms": round(statistics.median(e2e), 2),
                     "photo_to_embedding_ms_min": round(min(e2e), 2),
                     "photo_to_embedding_cpu_ms": round(statistics.median(cpu_times_of(e2e)), 2)})
    return {"benchmark": "photo", "photo": str(photo), "model": str(model), "embedding_size": embedder.embedding_size,
            "det_size": det_size, "steps": steps, "warmup": warmup, "rows": rows,
            "machine": device_info(dev), "torch_threads": torch.get_num_threads()}
