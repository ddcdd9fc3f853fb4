"""Face clustering at 10 k, 100 k and 1 M faces: the graph method irface uses against scikit-learn's
DBSCAN and HDBSCAN on the whole cosine matrix; and the same methods on the real-face fixtures.

Synthetic faces with identity structure: people's photo counts drawn heavy-tailed as in a photo library
(Zipf, exponent 2, capped at 1,000: most people once or twice, a few hundreds of times), each person a
random unit direction, each face that direction plus Gaussian noise of a per-face strength drawn from
[0.5, 1.2] (two faces of one person: cosine 0.41 to 0.8, ~0.55 typical, like real embeddings of good
and poor photos; two people: ~0 +- 1/sqrt(dim)). Every method runs in a child process of its own; its
peak memory (VmHWM) is reset once the faces are made, so it is the method's peak with the faces (dim x 4
bytes each) and the libraries loaded (`rss_before_mb`).

Methods (threshold 0.5, min 2 faces, as `irface cluster` by default):
- graph: `irface.cluster.graph.cluster_embeddings`: faiss k-NN graph (32 neighbours, exact up to 20,000
  faces, IVF beyond) + scikit-learn DBSCAN on the sparse graph;
- dbscan: scikit-learn DBSCAN(metric="cosine", algorithm="brute") on the embeddings (all pairs, chunked);
- hdbscan: scikit-learn HDBSCAN(metric="cosine", min_cluster_size=2): an N x N float64 matrix;
- graph-exact (only when asked for): the graph with exact search at any size, to see what IVF costs.
A dense method is not run where its N x N work or memory would not fit (`--dense-max`), and says so.

    PYTHONPATH=src python benchmarks/cluster_scale.py [--sizes 10000 100000 1000000] [--dim 512] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from irface.bench.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.5
MIN_FACES = 2
METHODS = ("graph", "dbscan", "hdbscan")
# Not run by default: the graph with exact search at every size (what IVF costs in quality), N^2 in time.
EXTRA_METHODS = ("graph-exact",)
FIXTURES = ROOT / "tests" / "fixtures" / "realface"


def people_sizes(n: int, rng: np.random.Generator, cap: int = 1000) -> np.ndarray:
    """Photos of each person, `n` in all: Zipf (exponent 2) counts capped at `cap`, as in a photo library."""
    sizes = []
    total = 0
    while total < n:
        s = np.minimum(rng.zipf(2.0, max(1024, n // 4)), cap)
        sizes.append(s)
        total += int(s.sum())
    sizes = np.concatenate(sizes)
    cut = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:cut].copy()
    sizes[-1] -= int(sizes.sum()) - n
    return sizes[sizes > 0]


def make_faces(n: int, dim: int, seed: int = 0, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(unit faces (n, dim) float32, person of each face), in a shuffled order."""
    rng = np.random.default_rng(seed)
    sizes = people_sizes(n, rng)
    who = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    centres = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = np.empty((n, dim), np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        noise = rng.uniform(0.5, 1.2, (b - a, 1)).astype(np.float32) / np.sqrt(dim, dtype=np.float32)
        faces[a:b] = centres[who[a:b]] + noise * rng.standard_normal((b - a, dim), dtype=np.float32)
        faces[a:b] /= np.linalg.norm(faces[a:b], axis=1, keepdims=True)
    return faces, who


def run_method(method: str, x: np.ndarray) -> np.ndarray:
    from irface.cluster.graph import by_size, cluster_embeddings

    if method == "graph":
        return cluster_embeddings(x, THRESHOLD, MIN_FACES)
    if method == "graph-exact":
        from irface.cluster import graph

        graph.EXACT_LIMIT = len(x)
        return cluster_embeddings(x, THRESHOLD, MIN_FACES)
    if method == "dbscan":
        from sklearn.cluster import DBSCAN

        # Cosine distance <= eps links two faces; our rule is similarity > threshold (equal but for ties).
        return by_size(DBSCAN(eps=1 - THRESHOLD, min_samples=MIN_FACES, metric="cosine",
                              algorithm="brute").fit(x).labels_)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        return by_size(HDBSCAN(min_cluster_size=MIN_FACES, metric="cosine", copy=True).fit(x).labels_)
    raise SystemExit(f"unknown method {method}")


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM, reset by `_reset_peak`; ru_maxrss where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Start the peak afresh (Linux: writing 5 to clear_refs), so that making the faces does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def one(method: str, n: int, dim: int, seed: int) -> dict:
    """One method on one size, in this process: time, peak memory, quality against the synthetic people."""
    from irface.cluster.metrics import clustering_scores

    import faiss  # noqa: F401  (imports are not what is timed)
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    x, who = make_faces(n, dim, seed)
    peak_of_making = _peak_mb()
    reset = _reset_peak()
    before = _peak_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    labels = run_method(method, x)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = clustering_scores(labels, who)
    return {"method": method, "faces": n, "dim": dim, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(_peak_mb()), "rss_before_mb": round(before), "peak_reset": reset,
            "peak_of_making_faces_mb": round(peak_of_making), "faces_mb": round(x.nbytes / 2**20),
            "bcubed_f1": round(scores["bcubed"]["f1"], 4), "pairwise_f1": round(scores["pairwise"]["f1"], 4),
            "people_found": scores["people_found"], "people_true": scores["people_true"],
            "noise_fraction": round(scores["noise_fraction"], 4)}


def skip_reason(method: str, n: int, dense_max: int) -> str | None:
    if method == "hdbscan" and n > min(dense_max, 20_000):
        return f"N x N float64 distances: {n * n * 8 / 2**30:.0f} GiB"
    if method == "dbscan" and n > dense_max:
        return (f"all {n * (n - 1) // 2:.2e} pairs scored: time grows as N^2, {(n / dense_max) ** 2:.0f}x the "
                f"{dense_max:,}-face run")
    return None


def fixtures() -> dict:
    """Each method on the largest face of each fixture photo (10 people, 21 photos), scored by folder."""
    from irface.cluster.metrics import clustering_scores
    from irface.cluster.photos import embed_every_face
    from irface.gallery.photos import identity_folders
    from irface.infer import load_model

    embedder = load_model(FIXTURES / "models" / "mobilefacenet_128d.onnx")
    folders, _ = identity_folders(FIXTURES / "photos")
    sources = [s for photos in folders.values() for s in photos]
    person = {s.name: who for who, photos in folders.items() for s in photos}
    result, rows = embed_every_face(embedder, sources, all_faces=False)
    truth = [person[r["source"]] for r in rows]
    out = {}
    for method in METHODS:
        s = clustering_scores(run_method(method, result.embeddings), truth)
        out[method] = {"bcubed_f1": round(s["bcubed"]["f1"], 4), "pairwise_f1": round(s["pairwise"]["f1"], 4),
                       "people_found": s["people_found"], "noise_fraction": round(s["noise_fraction"], 4)}
    return out


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def finish(report: dict, json_path: Optional[str]) -> int:
    """The report, with the load average at its end, printed and (with --json) written to `json_path`."""
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if json_path:
        Path(json_path).write_text(text + "\n")
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--methods", nargs="+", choices=METHODS + EXTRA_METHODS, default=list(METHODS))
    p.add_argument("--dense-max", type=int, default=10_000, help="largest N the all-pairs methods are run at")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inline", action="store_true", help="run in this process (no per-method peak memory)")
    p.add_argument("--no-fixtures", dest="fixtures", action="store_false")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="FILE", help="also write the report here")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.sizes[0], args.dim, args.seed)))
        return 0
    report = {"machine": machine(), "threshold": THRESHOLD, "min_faces": MIN_FACES, "runs": []}
    for n in args.sizes:
        for method in args.methods:
            reason = skip_reason(method, n, args.dense_max)
            if reason:
                row = {"method": method, "faces": n, "not_run": reason}
            elif args.inline:
                row = one(method, n, args.dim, args.seed)
            else:
                done = subprocess.run([sys.executable, __file__, "--one", method, "--sizes", str(n), "--dim",
                                       str(args.dim), "--seed", str(args.seed)], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{method} at {n}: {done.stderr.strip()[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
            report["runs"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.fixtures:
        report["fixtures"] = fixtures()
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
