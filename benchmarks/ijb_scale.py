"""IJB-C-sized template pooling and pair scoring: irface's vectorised code against the reference's loop.

Synthetic metadata of IJB-C's size (469,375 images of 512-d features stored with their mirrors,
23,124 templates, 15,658,489 pairs; media of 1 to 40 images; the image list in template order, as the
archive's meta files are), random features. Wall and CPU seconds (the machine may be shared), in one run:
- irface: image features (N1D1F1) + template pooling + L2 + scoring of every pair;
- the reference's pooling loop (`image2template_feature` of ijb_11.py, restated in tests/ijb_reference.py)
  on the first REF_TEMPLATES templates, scaled to all templates (it is linear in templates), and
  checked to give the same bits as irface's pooling on them;
- peak memory (ru_maxrss) above the stored features.

    python benchmarks/ijb_scale.py [--images 469375] [--templates 23124] [--pairs 15658489] [--ref-templates 1500]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.ijb_reference

from irface.eval import ijb  # noqa: E402
from irface.eval.protocol import l2_normalize  # noqa: E402
from tests import ijb_reference as ref  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def metadata(rng, images, templates, pairs):
    # Template sizes skewed like IJB-C's (many small templates, a few of hundreds of frames).
    sizes = rng.pareto(1.2, templates) + 1
    sizes = np.maximum(1, np.floor(sizes / sizes.sum() * (images - templates)).astype(int) + 1)
    sizes[: images - sizes.sum()] += 1 if images > sizes.sum() else 0
    sizes[-1] += images - sizes.sum()
    tids = np.repeat(rng.permutation(templates * 3)[:templates] + 1, sizes)
    medias = np.empty(images, np.int64)
    mid, pos = 0, 0
    for n in sizes:
        left = n
        while left:
            k = min(left, int(rng.integers(1, 41)))
            medias[pos:pos + k] = mid
            mid += 1
            pos += k
            left -= k
    unique = np.unique(tids)
    t1 = unique[rng.integers(0, len(unique), pairs)]
    t2 = unique[rng.integers(0, len(unique), pairs)]
    label = (rng.random(pairs) < 19557 / 15658489).astype(np.int8)
    label[:2] = (0, 1)
    return tids, medias, t1, t2, label  # file order by template, as the archive's meta lists them


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=469_375)
    p.add_argument("--templates", type=int, default=23_124)
    p.add_argument("--pairs", type=int, default=15_658_489)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ref-templates", type=int, default=1500)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    templates, medias, t1, t2, label = metadata(rng, args.images, args.templates, args.pairs)
    feats = np.empty((args.images, 2 * args.dim), np.float32)
    for lo in range(0, args.images, 65536):
        feats[lo:lo + 65536] = rng.standard_normal((min(65536, args.images - lo), 2 * args.dim), np.float32)
    faceness = rng.uniform(0.5, 1, args.images).astype(np.float32)
    base = rss_mb()
    mode = ijb.Mode()

    # irface end to end: image features (N1D1F1) + pooling, then L2 + scores + ROC of every pair.
    t0, c0 = time.perf_counter(), time.process_time()
    unique, sums = ijb.pool_templates(lambda idx: ijb.image_features(feats[idx], faceness[idx], mode), templates, medias)
    t_pool, c_pool = time.perf_counter() - t0, time.process_time() - c0
    norm = l2_normalize(sums)
    t1_, c1 = time.perf_counter(), time.process_time()
    result = ijb.verification(norm, unique, t1, t2, label)
    t_score, c_score = time.perf_counter() - t1_, time.process_time() - c1
    peak_irface = rss_mb() - base  # before the reference's copy of the image features below

    # Side by side on the same input (the image features computed first, as the reference does):
    # irface's pooling, then the reference's loop over the first templates, scaled to all.
    x = ref.image_input_feats(feats, faceness)
    t3, c3 = time.perf_counter(), time.process_time()
    _, sums_x = ijb.pool_templates(lambda idx: x[idx], templates, medias)
    t_pool_x, c_pool_x = time.perf_counter() - t3, time.process_time() - c3
    sub = unique[: args.ref_templates]
    t2_, c2 = time.perf_counter(), time.process_time()
    want = ref.template_sums(x, templates, medias, sub)
    t_ref = (time.perf_counter() - t2_) * len(unique) / len(sub)
    c_ref = (time.process_time() - c2) * len(unique) / len(sub)
    same = bool(np.array_equal(want, sums[: len(sub)])) and bool(np.array_equal(sums_x, sums))
    out = {"images": args.images, "templates": int(len(unique)), "pairs": args.pairs, "dim": args.dim,
           "irface_pool_s": round(t_pool, 2), "irface_score_s": round(t_score, 2),
           "irface_total_s": round(t_pool + t_score, 2),
           "irface_pool_cpu_s": round(c_pool, 2), "irface_score_cpu_s": round(c_score, 2),
           "reference_pool_cpu_s_extrapolated": round(c_ref, 1),
           "reference_pool_s_extrapolated": round(t_ref, 1), "reference_templates_timed": len(sub),
           "irface_pool_only_s": round(t_pool_x, 2), "irface_pool_only_cpu_s": round(c_pool_x, 2),
           "pool_speedup": round(t_ref / t_pool_x, 1), "pool_speedup_cpu": round(c_ref / c_pool_x, 1),
           "pooling_bitwise_equal": same,
           "peak_mb_above_features": round(peak_irface), "features_mb": round(feats.nbytes / 2 ** 20),
           "tar_at_1e-4": result.tar[1e-4][0]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
