"""How small an embedding error must be for the protocol's Accuracy-Flip to stay within 0.2 points.

    PYTHONPATH=src python benchmarks/protocol_resolution.py --model demo_out/run --sets demo_out/data
    PYTHONPATH=src python benchmarks/protocol_resolution.py --model demo_out/run --sets big_sets --json res.json

Embeds each set (lfw, cfp_fp, agedb_30 .bin) once with the fp32 model, then for each relative noise
level r adds isotropic Gaussian noise of r times each embedding's norm (1 - cosine to fp32 is about
r^2 / 2) to the embeddings and their mirrors, and runs the protocol again, over several seeds. For
each level: in how many seeds all three sets stayed within `--within` points of fp32, and the largest
change. Any reduced-precision export (int8, fp16) is an error of some such size; this says which sizes
the protocol can tell apart from none on sets of this many pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SETS = ("lfw", "cfp_fp", "agedb_30")
LEVELS = (0.028, 0.014, 0.007, 0.0035, 0.0018, 0.0009)


def noisy(embeddings: np.ndarray, relative: float, rng: np.random.Generator) -> np.ndarray:
    norm = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings + rng.normal(size=embeddings.shape) * norm * relative / np.sqrt(embeddings.shape[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the fp32 model (irface run folder, checkpoint, state dict, ONNX)")
    p.add_argument("--sets", required=True, help="folder with lfw.bin, cfp_fp.bin, agedb_30.bin")
    p.add_argument("--levels", type=float, nargs="+", default=list(LEVELS), help="relative noise levels")
    p.add_argument("--seeds", type=int, default=20, help="noise draws per level (default 20)")
    p.add_argument("--within", type=float, default=0.2, help="points (default 0.2)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    from irface.eval.protocol import flip_pair_distances, fold_accuracies
    from irface.eval.verification import embed_bin
    from irface.infer import load_model

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    model = load_model(args.model)
    sets = {n: embed_bin(model.embed, str(Path(args.sets) / f"{n}.bin"), 64, flip=True, min_pairs=10) for n in SETS}

    def accuracy(emb, emb_flip, issame):
        return float(fold_accuracies(flip_pair_distances(emb, emb_flip), issame)[0].mean())

    reference = {n: accuracy(*v) for n, v in sets.items()}
    rows = []
    print(f"| relative noise r | 1 - cosine | seeds with all 3 sets within {args.within} points | "
          f"largest change (points) |\n|---:|---:|---:|---:|")
    for level in args.levels:
        rng = np.random.default_rng(0)
        held, worst = 0, 0.0
        for _ in range(args.seeds):
            changes = [100 * (accuracy(noisy(e, level, rng), noisy(f, level, rng), s) - reference[n])
                       for n, (e, f, s) in sets.items()]
            held += all(abs(c) <= args.within + 1e-9 for c in changes)
            worst = max(worst, max(abs(c) for c in changes))
        one_minus_cos = 1 - 1 / np.sqrt(1 + level ** 2)
        rows.append({"relative": level, "one_minus_cosine": one_minus_cos, "held": held, "seeds": args.seeds,
                     "largest_change_points": worst})
        print(f"| {level:.4f} | {one_minus_cos:.1e} | {held} / {args.seeds} | {worst:.2f} |", flush=True)
    pairs = {n: int(len(v[2])) for n, v in sets.items()}
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started, "argv": sys.argv[1:], "pairs": pairs,
                                               "reference": reference, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
