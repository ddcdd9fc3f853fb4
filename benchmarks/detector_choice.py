"""The detector choice, measured: faces found and time per photo for the candidate detectors.

Runs each candidate that is importable on every photo under the given folders (default: the realface
fixtures) and prints, per detector: photos where the face count was right (1 for a single-person
photo, 6 for group/t1.jpg), landmark precision (integers or sub-pixel), and the median time of a
640x480 detection. Candidates: irface's RetinaFace (the `detect` extra) and YuNet (`yuface`, BSD-3,
CPython 3.11 wheels only; run this script in an environment with it to include it).

    python benchmarks/detector_choice.py [--rounds 20] [PHOTO_FOLDER ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [ROOT / "tests" / "fixtures" / "realface"]


def load(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def retinaface():
    sys.path.insert(0, str(ROOT / "src"))
    from irface.detect import load_detector

    det = load_detector()
    return lambda rgb: [f.landmarks for f in det.detect(rgb)]


def yunet():
    import yuface

    def run(rgb):
        # YuNet wants BGR; it warns above 960 px, so larger photos are scaled down first (and back).
        h, w = rgb.shape[:2]
        scale = min(1.0, 960 / max(h, w))
        img = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale))))
        _, _, lms = yuface.detect(np.ascontiguousarray(img[:, :, ::-1]), conf=0.6)
        return [np.asarray(lm, np.float64).reshape(5, 2) / scale for lm in lms]

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    photos = sorted(p for f in args.folders for p in f.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    group = [p for p in photos if p.parent.name == "group"]
    for name, make in (("retinaface (irface detect)", retinaface), ("yunet (yuface)", yunet)):
        try:
            detect = make()
        except Exception as e:  # ImportError, or irface's one line naming the missing extra
            print(f"{name}: not available here ({e})")
            continue
        right = 0
        for p in photos:
            right += len(detect(load(p))) == (6 if p in group else 1)
        sample = np.asarray(Image.fromarray(load(group[0] if group else photos[0])).resize((640, 480)))
        integer = all(np.allclose(lm, np.round(lm)) for lm in detect(sample))  # at 640x480 nothing is rescaled
        for _ in range(3):
            detect(sample)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            detect(sample)
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"{name}: right face count on {right}/{len(photos)} photos; landmarks "
              f"{'whole pixels' if integer else 'sub-pixel'}; 640x480: median {statistics.median(times):.1f} ms, "
              f"min {min(times):.1f} ms")


if __name__ == "__main__":
    main()
