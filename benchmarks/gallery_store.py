"""Enrolment and search against gallery size and worker processes: the journaled file gallery and PostgreSQL.

    PYTHONPATH=src python benchmarks/gallery_store.py --sizes 1000 100000 1000000 --json store.json

For each size N (random 512-d unit faces, 4 per identity):

- `postgres`: a fresh database of a throwaway server (started as the tests start theirs,
  tests/pg_support.py; fsync off, so commits are a lower bound on a real server's), filled with binary
  `COPY` (not N enrolments), then served by 1 and by 2 **worker processes** at once, each as an
  `irface serve` worker holds it: it opens the gallery (the load time and the memory of a new worker are
  measured here), then, all workers together, does `--rounds` times: one enrolment (`add` of one face of a
  new identity with a 6 kB picture: one transaction) and one search (top 5, with the catch-up read of the
  changes the other worker made). Medians per worker.
- `file`: the one-file gallery, built and saved, then one worker process (a file has one writer:
  `irface serve --workers 2` refuses it) opens it and does the same rounds: an enrolment is one
  checksummed record appended to the journal and fsynced.

Each worker searches with one faiss thread, so 1000 / search_ms is searches per second per core. The
memory is the worker's resident set once loaded (VmRSS) and its peak while loading (ru_maxrss). Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from irface.bench.machine import cpu_model

DIM = 512
PICTURE = bytes(6000)
FINGERPRINT = "sha256:bench-store"
_CHUNK = 50_000
_HERE = Path(__file__).resolve()


def faces(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- filling a gallery ----------------------------------------------------------------------------
def fill_postgres(url: str, n: int) -> float:
    """An irface gallery of `n` faces in the empty database at `url`, rows written with binary COPY; seconds."""
    import psycopg

    from irface.gallery import create_gallery
    from irface.gallery.names import identity_key

    t0 = time.perf_counter()
    create_gallery(url, fingerprint=FINGERPRINT, embedding_size=DIM).save()  # irface's own schema and settings
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY irface_identities (name, key, faces) FROM STDIN") as copy:
            for i in range(0, n, 4):
                copy.write_row((f"id{i // 4}", identity_key(f"id{i // 4}"), min(4, n - i)))
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            x = faces(b - a, a)
            with cur.copy("COPY irface_faces (id, identity, source, fingerprint, embedding) "
                          "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "text", "text", "bytea"])
                for i in range(a, b):
                    copy.write_row((i, f"id{i // 4}", f"{i}.jpg", FINGERPRINT, x[i - a].tobytes()))
        cur.execute("UPDATE irface_meta SET value = %s WHERE key = 'next_id'", (str(n),))
    return time.perf_counter() - t0


def database_mb(url: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        return round(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 1e6, 1)


def fill_file(path: Path, n: int) -> float:
    """A saved gallery file of `n` faces; seconds."""
    from irface.gallery import Gallery

    t0 = time.perf_counter()
    g = Gallery.create(path, fingerprint=FINGERPRINT, embedding_size=DIM)
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        g.add_many([f"id{i // 4}" for i in range(a, b)], faces(b - a, a), [f"{i}.jpg" for i in range(a, b)])
    g.save()
    del g  # not close(): nothing to compact, and the memory goes now
    return time.perf_counter() - t0


# ---- one worker process ---------------------------------------------------------------------------
def worker(specs: list[str], tag: str, rounds: int) -> None:
    """A worker: open the gallery (or galleries), say so, wait for "go" on stdin, time the rounds (one
    enrolment and one search in each gallery per round, interleaved), print the figures."""
    import faiss

    from irface.gallery import open_gallery

    faiss.omp_set_num_threads(1)
    galleries, load_s = [], []
    for spec in specs:
        t0 = time.perf_counter()
        galleries.append(open_gallery(spec))
        load_s.append(time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the peak, while loading
    held_mb = _resident_mb()  # what stays once loaded
    print("ready", flush=True)
    sys.stdin.readline()
    enrol: list[list[float]] = [[] for _ in specs]
    search: list[list[float]] = [[] for _ in specs]
    q = faces(1, 99)
    seed = 10_000_000 + zlib.crc32(tag.encode()) % 1000 * 1000
    for i in range(rounds):
        for k, g in enumerate(galleries):
            start = time.perf_counter()
            g.add(f"new-{tag}-{i}", faces(1, seed + i), [f"upload:{tag}/{i}"], thumbnails=[PICTURE])
            enrol[k].append(time.perf_counter() - start)
            start = time.perf_counter()
            g.search(q, top_k=5)
            search[k].append(time.perf_counter() - start)
    print(json.dumps([{"load_s": t, "rss_mb": rss_mb, "held_mb": held_mb, "faces": len(g), "enrol_ms": 1000 * statistics.median(e),
                       "search_ms": 1000 * statistics.median(s)}
                      for t, g, e, s in zip(load_s, galleries, enrol, search)]), flush=True)
    os._exit(0)  # no close(): a file gallery would compact its journal, which is not what is timed


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def run_workers(specs: list[str], count: int, rounds: int, tag: str) -> list[list[dict[str, Any]]]:
    """`count` worker processes on the same galleries, timed together; each one's figures per gallery."""
    src = str(_HERE.parents[1] / "src")  # this checkout's irface, in the workers too
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, str(_HERE), "--worker", *specs, "--tag", f"{tag}{k}",
                               "--rounds", str(rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env) for k in range(count)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a worker failed to open the gallery (exit {p.wait()})")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None and p.wait(timeout=600) is None:
                p.kill()
    return out


# ---- one size ---------------------------------------------------------------------------------------
def measure(n: int, rounds: int, worker_counts: list[int], folder: Path, pg_server: Any = None,
            keep: bool = False) -> tuple[list[dict], Optional[str]]:
    """The rows of one size; with `keep`, the PostgreSQL database is left for the caller (its URL)."""
    rows = []

    def row(store: str, workers: int, fill_s: float, results: list[dict]) -> dict:
        r = {"faces": n, "store": store, "workers": workers, "fill_s": round(fill_s, 1),
             "load_s": round(max(x["load_s"] for x in results), 2),  # the slowest of workers loading at once
             "worker_mb": round(max(x["held_mb"] for x in results)),
             "worker_peak_mb": round(max(x["rss_mb"] for x in results)),
             "enrol_ms": round(statistics.median(x["enrol_ms"] for x in results), 2),
             "search_ms": round(statistics.median(x["search_ms"] for x in results), 2)}
        r["searches_per_s_per_core"] = round(1000 / r["search_ms"], 1)
        print(json.dumps(r), flush=True)
        return r

    if worker_counts:
        path = folder / f"g{n}.gallery"
        fill_s = fill_file(path, n)
        rows.append(row("file", 1, fill_s, [w[0] for w in run_workers([str(path)], 1, rounds, "f")]))
        for p in (path, path.with_name(path.name + ".journal")):
            p.unlink(missing_ok=True)
    url = None
    if pg_server is not None:
        url = pg_server.url(pg_server.new_database())
        fill_s = fill_postgres(url, n)
        db_mb = database_mb(url)
        print(json.dumps({"faces": n, "store": "postgresql", "fill_s": round(fill_s, 1), "database_mb": db_mb}),
              flush=True)
        for k in worker_counts:
            rows.append({**row("postgresql", k, fill_s, [w[0] for w in run_workers([url], k, rounds, f"p{k}w")]),
                         "database_mb": db_mb})
        if not keep:
            _drop(pg_server, url)
            url = None
    return rows, url


def _drop(pg_server: Any, url: str) -> None:
    import psycopg

    db = url.split("@/", 1)[1].split("?", 1)[0]
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}"')


def run(sizes: list[int], rounds: int, worker_counts: list[int], pg_server: Any = None,
        folder: Optional[Path] = None) -> dict[str, Any]:
    """Every size, file and (with a server) PostgreSQL; then PostgreSQL's enrolment at the smallest size
    against the largest, in one worker holding both, enrolments interleaved (a busy machine slows both
    alike, so their ratio holds); the report that --json writes."""
    rows: list[dict] = []
    kept: dict[int, str] = {}
    sizes = sorted(sizes)
    try:
        with tempfile.TemporaryDirectory(prefix="irface-store-", dir=folder) as tmp:
            for n in sizes:
                keep = pg_server is not None and len(sizes) > 1 and n in (sizes[0], sizes[-1])
                got, url = measure(n, rounds, worker_counts, Path(tmp), pg_server, keep=keep)
                rows += got
                if url is not None:
                    kept[n] = url
        ratio = None
        if len(kept) == 2:
            small, large = run_workers([kept[sizes[0]], kept[sizes[-1]]], 1, 2 * rounds, "r")[0]
            ratio = {"faces": [sizes[0], sizes[-1]], "enrol_ms": [round(small["enrol_ms"], 2),
                                                                  round(large["enrol_ms"], 2)],
                     "ratio": round(large["enrol_ms"] / small["enrol_ms"], 2)}
            print(json.dumps({"postgres_enrol_interleaved": ratio}), flush=True)
    finally:
        for url in kept.values():
            _drop(pg_server, url)
    return {"rows": rows, "postgres_enrol_interleaved": ratio, "machine": cpu_model(),
            "load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "python": platform.python_version(), "command": " ".join(sys.argv)}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=20, help="enrolments and searches timed per worker (default 20)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="PostgreSQL worker counts (default 1 2)")
    ap.add_argument("--no-pg", action="store_true", help="the file gallery only")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--ratio-only", action="store_true",
                    help="only PostgreSQL's enrolment at the smallest against the largest size, interleaved")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # internal: run as one worker on this gallery
    ap.add_argument("--tag", default="w", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.tag, args.rounds)
    if args.ratio_only and args.no_pg:
        ap.error("--ratio-only measures PostgreSQL: drop --no-pg")
    server = None
    if not args.no_pg:
        sys.path.insert(0, str(_HERE.parents[1] / "tests"))
        from pg_support import start_server

        server = start_server()
    try:
        report = run(args.sizes, args.rounds, [] if args.ratio_only else args.workers, server)
    finally:
        if server is not None:
            server.close()
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
