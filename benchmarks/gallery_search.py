"""Gallery search at scale: exact, IVF and HNSW on a synthetic 1 M x 512 gallery.

    PYTHONPATH=src nice -n 5 python benchmarks/gallery_search.py --m 16 --ef-construction 40 --json gallery.json
    PYTHONPATH=src python benchmarks/gallery_search.py --faces 100000 --json out.json

Synthetic faces: `faces / per-identity` random unit "people", each face their direction plus noise
scaled so that two faces of one person have cosine ~0.6 (real embeddings' same-person similarity),
and queries that are fresh faces of enrolled people. Pure random vectors would have no neighbour
structure at all, which no face gallery has. For each kind: build time (index + metadata, through
`Gallery.add_many`), memory (process RSS grown by the build), query latency through `Gallery.search`
(top 5 identities) at batch 1 and 64, and recall@1 against exact search (the same nearest face as
`flat`; and the same top identity). IVF and HNSW are swept over their search knob.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

from irface.bench.machine import cpu_model


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_faces(n: int, dim: int, per_identity: int, queries: int, seed: int = 0):
    """(faces (n, dim) fp32, identity of each face, queries (q, dim), identity of each query)."""
    rng = np.random.default_rng(seed)
    people = max(1, n // per_identity)
    centres = rng.standard_normal((people, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = 0.82 / np.sqrt(dim)  # |noise| ~ 0.82: cos(face, centre) ~ 0.77, cos(face, face) ~ 0.6
    who = np.arange(n) % people
    faces = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        faces[a:b] = centres[who[a:b]] + noise * rng.standard_normal((b - a, dim), dtype=np.float32)
    qwho = rng.integers(0, people, queries)
    q = centres[qwho] + noise * rng.standard_normal((queries, dim), dtype=np.float32)
    return faces, who, q, qwho


def build(kind: str, faces: np.ndarray, who: np.ndarray, params: dict, chunk: int = 50_000):
    from irface.gallery import Gallery

    names = np.array([f"id{i}" for i in range(who.max() + 1)], dtype=object)
    gc.collect()
    before = rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    g = Gallery.create("/tmp/unused.gallery", fingerprint="sha256:benchmark", embedding_size=faces.shape[1],
                       index=kind, params=params)
    if kind == "ivf":
        rng = np.random.default_rng(1)
        g.train(faces[rng.choice(len(faces), min(len(faces), 64 * (params.get("nlist") or 1024)), replace=False)])
    for a in range(0, len(faces), chunk):
        b = min(len(faces), a + chunk)
        g.add_many(list(names[who[a:b]]), faces[a:b], [f"id{w}/{i}.jpg" for i, w in zip(range(a, b), who[a:b])])
    seconds = {"build_seconds": time.perf_counter() - start, "build_cpu_seconds": time.process_time() - cpu}
    return g, seconds, rss_mb() - before


def latency(g, q: np.ndarray, batch: int, max_queries: int) -> dict:
    """Wall ms per query (median, p90, best batch) and CPU ms per query (this process, all threads).

    On a shared machine the wall figures grow with the other jobs' load; the CPU time much less so:
    CPU ms / threads is what an idle machine's wall time would be when the threads scale.
    """
    g.search(q[:batch], top_k=5)  # warm-up
    times = []
    n = min(len(q), max_queries)
    cpu = time.process_time()
    for a in range(0, n - batch + 1, batch):
        t = time.perf_counter()
        g.search(q[a:a + batch], top_k=5)
        times.append((time.perf_counter() - t) * 1000 / batch)
    cpu_ms = (time.process_time() - cpu) * 1000 / (len(times) * batch)
    return {"ms_per_query_median": float(np.median(times)), "ms_per_query_p90": float(np.percentile(times, 90)),
            "ms_per_query_best": float(np.min(times)), "cpu_ms_per_query": cpu_ms, "batches": len(times)}


def recall(g, q: np.ndarray, exact_ids: np.ndarray, exact_top: list[str]) -> dict:
    _, ids = g.nearest(q, 1)
    top = [r[0].identity for r in g.search(q, top_k=1)]
    return {"recall_at_1": float(np.mean(ids[:, 0] == exact_ids)),
            "identity_recall_at_1": float(np.mean([a == b for a, b in zip(top, exact_top)]))}


def measure(g, q, exact_ids, exact_top, args) -> dict:
    return {**recall(g, q, exact_ids, exact_top),
            "batch_1": latency(g, q, 1, args.single_queries),
            "batch_64": latency(g, q, 64, len(q))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--per-identity", type=int, default=10, help="faces per synthetic person")
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--single-queries", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--threads", type=int, default=2, help="faiss (OpenMP) threads")
    p.add_argument("--kinds", default="flat,ivf,hnsw")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE")
    args = p.parse_args(argv)

    import faiss

    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)  # exact batches are torch matmuls (irface.gallery.index)
    t = time.perf_counter()
    faces, who, q, _ = make_faces(args.faces, args.dim, args.per_identity, args.queries)
    report = {"faces": args.faces, "dim": args.dim, "per_identity": args.per_identity, "queries": args.queries,
              "threads": args.threads, "machine": cpu_model(), "faiss": faiss.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": os.getloadavg(),
              "data_seconds": time.perf_counter() - t, "kinds": {}}
    print(f"{args.faces:,} x {args.dim} faces made in {report['data_seconds']:.1f} s; {args.threads} threads",
          file=sys.stderr)

    # Exact search first: the ground truth every approximate index is measured against.
    g, seconds, mem = build("flat", faces, who, {})
    _, exact = g.nearest(q, 1)
    exact_ids = exact[:, 0]
    exact_top = [r[0].identity for r in g.search(q, top_k=1)]
    kinds = args.kinds.split(",")
    if "flat" in kinds:
        report["kinds"]["flat"] = {**seconds, "rss_mb": mem, **measure(g, q, exact_ids, exact_top, args)}
        print("flat", json.dumps(report["kinds"]["flat"]), file=sys.stderr)
        write(report, args.json)
    del g
    for kind, knob, values, params in (
            ("ivf", "nprobe", args.nprobe, {"nlist": args.nlist}),
            ("hnsw", "ef_search", args.ef_search, {"m": args.m, "ef_construction": args.ef_construction})):
        if kind not in kinds:
            continue
        g, seconds, mem = build(kind, faces, who, params)
        entry = {**seconds, "rss_mb": mem, "params": dict(params), "sweep": {}}
        for v in values:
            g.tune(**{knob: v})
            entry["sweep"][str(v)] = measure(g, q, exact_ids, exact_top, args)
            print(kind, knob, v, json.dumps(entry["sweep"][str(v)]), file=sys.stderr)
        report["kinds"][kind] = entry
        write(report, args.json)
        del g
        gc.collect()
    report["load_after"] = os.getloadavg()
    write(report, args.json, final=True)
    return 0


def write(report: dict, target, final: bool = False) -> None:
    """The JSON so far (to FILE after each index kind, so a long run keeps what it measured)."""
    body = json.dumps(report, indent=2)
    if target in (None, "-"):
        if final:
            print(body)
        return
    with open(target, "w") as f:
        f.write(body + "\n")


if __name__ == "__main__":
    sys.exit(main())
