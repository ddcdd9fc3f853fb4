"""What int8 costs in verification accuracy, against how much the protocol moves by chance.

    PYTHONPATH=src python benchmarks/int8_accuracy.py --model demo_out/run --calib demo_out/data \
        --sets demo_out/data --json int8_accuracy.json                  # the demo's 600-pair sets
    PYTHONPATH=src python benchmarks/int8_accuracy.py --model demo_out/run --calib demo_out/data \
        --pairs 6000 --json int8_accuracy_6000.json                     # 6,000 pairs per set, like LFW

For each int8 form (`irface export --int8 --int8-form ...`, calibrated on `--calib`), the protocol's
Accuracy-Flip of fp32 and int8 on each set, and the paired measure: both judged at fp32's threshold,
how many pair decisions changed. Then the same comparison for fp32 embeddings plus random noise of
the int8 model's size (same mean cosine to fp32), a few seeds: how far the protocol's figure moves
when nothing but noise of that size is added. `--pairs N` synthesises sets of N pairs of the demo's
held-out identities (the demo's seed and identity counts, the model's image size) instead of `--sets`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETS = ("lfw", "cfp_fp", "agedb_30")
class NoisyEmbedder:
    """fp32 embeddings plus isotropic Gaussian noise of `relative` times each embedding's norm."""

    def __init__(self, base, relative: float, seed: int):
        self.base, self.relative = base, relative
        self.rng = np.random.default_rng(seed)
        self.input_size, self.embedding_size = base.input_size, base.embedding_size

    def embed(self, images: np.ndarray) -> np.ndarray:
        e = self.base.embed(images)
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        return e + self.rng.normal(size=e.shape) * norm * self.relative / np.sqrt(e.shape[1])


def synthesise_sets(out: Path, pairs: int, size: int) -> Path:
    from irface.data.synth import verification_set
    from irface.data.bin import save_bin
    from irface.demo import DemoSettings

    d = DemoSettings()
    held = np.arange(d.ids, d.ids + d.holdout_ids)
    for name in SETS:
        images, issame = verification_set(d.seed, name, held, pairs, size)
        save_bin(out / f"{name}.bin", images, issame)
    return out


def rows_of(label: str, entries: list[dict]) -> list[dict]:
    return [{"model": label, "set": Path(e["bin"]).stem, "pairs": e["decisions"]["pairs"],
             "fp32": e["reference"]["accuracy_flip"], "other": e["exported"]["accuracy_flip"],
             "delta_points": 100 * (e["exported"]["accuracy_flip"] - e["reference"]["accuracy_flip"]),
             "changed": e["decisions"]["changed"], "now_right": e["decisions"]["now_right"],
             "now_wrong": e["decisions"]["now_wrong"], "paired_delta_points": 100 * e["decisions"]["delta"]}
            for e in entries]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the fp32 model (irface run folder, checkpoint, state dict)")
    p.add_argument("--calib", required=True, help="int8 calibration source (RecordIO folder, image folder or .bin)")
    p.add_argument("--sets", help="folder with lfw.bin, cfp_fp.bin, agedb_30.bin")
    p.add_argument("--pairs", type=int, help="synthesise sets of this many pairs instead of --sets")
    p.add_argument("--forms", nargs="+", default=["qdq", "cpu"],
                   help="int8 forms (default qdq cpu)")
    p.add_argument("--noise-seeds", type=int, default=3, help="noise repeats (default 3)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    if bool(args.sets) == bool(args.pairs):
        p.error("give --sets or --pairs")
    logging.basicConfig(level=logging.WARNING)
    return measure(args)


def measure(args) -> int:
    from irface.export import ExportOptions, Int8Options, export_model
    from irface.infer import load_model
    from irface.export.accuracy import compare_accuracy

    reference = load_model(args.model, fold_bn=False)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    rows: list[dict] = []
    forms: dict[str, dict] = {}
    cache: dict = {}  # fp32's embeddings of each set, computed once
    with tempfile.TemporaryDirectory(prefix="irface-int8-acc-") as tmp:
        sets_dir = Path(args.sets) if args.sets else synthesise_sets(Path(tmp), args.pairs, reference.input_size)
        bins = [sets_dir / f"{n}.bin" for n in SETS]
        for form in args.forms:
            out = Path(tmp) / f"int8-{form.replace('/', '-')}.onnx"
            report = export_model(args.model, out, ExportOptions(int8=Int8Options(args.calib, form=form)))
            forms[form] = {"int8_agreement": report["int8_agreement"], "calibration": report["calibration"]}
            rows += rows_of(f"int8 {form}", compare_accuracy(reference, load_model(out), bins, reference_cache=cache))
            print(f"int8 {form}: done", file=sys.stderr, flush=True)
        # Noise of the first form's size: cos = 1 / sqrt(1 + r^2) for isotropic noise of relative norm r.
        cos = forms[args.forms[0]]["int8_agreement"]["mean_cosine"]
        relative = float(np.sqrt(max(1.0 / cos ** 2 - 1.0, 0.0)))
        for seed in range(args.noise_seeds):
            noisy = NoisyEmbedder(reference, relative, seed)
            rows += rows_of(f"fp32 + noise (seed {seed})", compare_accuracy(reference, noisy, bins,
                                                                             reference_cache=cache))
    print("| model | set | pairs | fp32 | other | protocol delta (points) | decisions changed (right/wrong) "
          "| paired delta (points) |\n|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['set']} | {r['pairs']} | {r['fp32']:.4f} | {r['other']:.4f} | "
              f"{r['delta_points']:+.2f} | {r['changed']} ({r['now_right']}/{r['now_wrong']}) | "
              f"{r['paired_delta_points']:+.2f} |")
    print("\n| int8 form | 1 - mean cosine to fp32 (64 faces) |\n|---|---:|")
    for form, figures in forms.items():
        print(f"| {form} | {1 - figures['int8_agreement']['mean_cosine']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started, "argv": sys.argv[1:], "forms": forms,
                                               "noise_relative": relative, "noise_matches_cosine": cos,
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
