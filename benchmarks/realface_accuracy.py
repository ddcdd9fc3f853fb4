"""Accuracy from raw photos: all-pairs AUC of a model on photos of identity folders, with and without detection.

Embeds every photo under FOLDER (one folder per person) as `irface embed` does (detect, align the
largest face, embed) and as a naive pipeline would (the whole photo resized to 112x112), and prints
for each: the AUC of same- against different-person cosine similarities, and the lowest same-person
and highest different-person similarity.

    python benchmarks/realface_accuracy.py [MODEL] [FOLDER] [--input-mean M --input-std S]
    (defaults: the realface fixtures' MobileFaceNet and photos, ImageNet normalisation)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "realface"


def main() -> None:
    from irface.eval.protocol import roc_auc
    from irface.infer import load_model
    from irface.infer.embed import embed_sources
    from irface.infer.images import collect_faces

    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(FIXTURES / "models" / "mobilefacenet_128d.onnx"))
    ap.add_argument("folder", nargs="?", default=str(FIXTURES / "photos"))
    ap.add_argument("--input-mean", default="123.675,116.28,103.53")
    ap.add_argument("--input-std", default="58.395,57.12,57.375")
    args = ap.parse_args()
    model = load_model(args.model, input_mean=args.input_mean, input_std=args.input_std)
    sources = collect_faces([args.folder], model.input_size)
    for mode, label in (("auto", "detected and aligned"), ("aligned", "whole photo resized")):
        r = embed_sources(model, sources, progress=False, mode=mode)
        ids = np.asarray([Path(n).parent.name for n in r.names])
        i, j = np.triu_indices(len(ids), 1)
        sims, same = np.sum(r.embeddings[i] * r.embeddings[j], axis=1), ids[i] == ids[j]
        print(f"{label:>22}: {len(ids)} photos ({len(r.skipped)} skipped), {same.sum()} same / {(~same).sum()} "
              f"different pairs: AUC {roc_auc(sims, same):.3f}; same-person min {sims[same].min():.3f} "
              f"mean {sims[same].mean():.3f}; different-person max {sims[~same].max():.3f} mean {sims[~same].mean():.3f}")


if __name__ == "__main__":
    main()
