"""One enrolment against gallery size: the file gallery's old whole-file rewrite, its journal, and PostgreSQL.

    PYTHONPATH=src python benchmarks/gallery_enroll.py --sizes 10000 100000 --json enroll.json
    PYTHONPATH=src python benchmarks/gallery_enroll.py --sizes 1000 100000 --pg --json enroll.json   # + PostgreSQL

An enrolment here is what `/v1/gallery/enroll` does to the gallery once the face is embedded: one face
(512-d, random, unit) of a new identity, with a 6 kB picture, made durable before it returns:

- `rewrite`: `add` then `save()`: the whole file written, synced and renamed (every enrolment before the
  journal; now what `save()` does to compact);
- `journal`: `add` alone on a gallery file that is on disk: one checksummed record appended and fsynced;
- `postgres` (with `--pg`): `add` on a PostgreSQL gallery: one transaction (a throwaway server started
  as the tests start theirs, tests/pg_support.py; fsync off there, so a lower bound on a real server's
  commit); also the time a new process takes to load the gallery from the database, and one search.

The rewrite is timed first, alone; the journal and PostgreSQL in interleaved rounds (a busy machine slows
them alike); medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from irface.bench.machine import cpu_model

DIM = 512
PICTURE = bytes(6000)


def _faces(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_file(path: Path, n: int) -> None:
    from irface.gallery import Gallery

    g = Gallery.create(path, fingerprint="sha256:bench", embedding_size=DIM)
    for a in range(0, n, 50_000):
        b = min(n, a + 50_000)
        g.add_many([f"id{i // 4}" for i in range(a, b)], _faces(b - a, a), [f"{i}.jpg" for i in range(a, b)])
    g.save()


def time_enrol(gallery, tag: str, i: int, save: bool) -> float:
    start = time.perf_counter()
    gallery.add(f"new-{tag}-{i}", _faces(1, 10_000_000 + i), [f"upload:{tag}/{i}"], thumbnails=[PICTURE])
    if save:
        gallery.save()
    return time.perf_counter() - start


def measure(n: int, rounds: int, folder: Path, pg_server=None) -> dict:
    from irface.gallery import Gallery, copy_gallery, open_gallery

    path = folder / f"g{n}.gallery"
    t0 = time.perf_counter()
    build_file(path, n)
    out = {"faces": n, "file_mb": round(path.stat().st_size / 1e6, 1), "build_s": round(time.perf_counter() - t0, 1)}
    rewrite_path = folder / f"r{n}.gallery"
    shutil.copy(path, rewrite_path)
    rewrite, journal = Gallery.open(rewrite_path), Gallery.open(path)
    pg = None
    if pg_server is not None:
        url = pg_server.url(pg_server.new_database())
        t0 = time.perf_counter()
        copy_gallery(path, url)
        out["pg_copy_in_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        pg = open_gallery(url)
        out["pg_load_s"] = round(time.perf_counter() - t0, 2)
    times: dict[str, list[float]] = {"rewrite": [], "journal": [], "postgres": []}
    # The old path writes hundreds of MB per enrolment at 100 k: timed on its own, first (interleaved, its
    # writes back to disk slowed the others' syncs 2-4x), and fewer times.
    for i in range(max(3, rounds // 4)):
        times["rewrite"].append(time_enrol(rewrite, "r", i, save=True))
    os.sync()  # the builds' and rewrites' dirty pages written back now, not during the next paths' fsyncs
    for i in range(rounds):
        times["journal"].append(time_enrol(journal, "j", i, save=False))
        if pg is not None:
            times["postgres"].append(time_enrol(pg, "p", i, save=False))
    for key, values in times.items():
        if values:
            out[f"{key}_ms"] = round(1000 * statistics.median(values), 2)
    q = _faces(1, 99)
    for name, g in (("file", journal), ("postgres", pg)):
        if g is not None:
            g.search(q)
            t0 = time.perf_counter()
            for _ in range(10):
                g.search(q, top_k=5)
            out[f"{name}_search_ms"] = round(100 * (time.perf_counter() - t0), 2)
    t0 = time.perf_counter()
    journal.close()  # the compaction the journal defers
    out["compact_s"] = round(time.perf_counter() - t0, 2)
    if pg is not None:
        pg.close()
    for p in (path, rewrite_path):
        p.unlink(missing_ok=True)
        p.with_name(p.name + ".journal").unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--rounds", type=int, default=20, help="enrolments timed per path and size (default 20)")
    ap.add_argument("--pg", action="store_true", help="also PostgreSQL (a throwaway server: Debian's postgresql)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    server = None
    if args.pg:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from pg_support import start_server

        server = start_server()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="irface-enrol-") as tmp:
            for n in args.sizes:
                rows.append(measure(n, args.rounds, Path(tmp), server))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.close()
    report = {"rows": rows, "machine": cpu_model(), "load": subprocess.run(["uptime"], capture_output=True,
                                                                      text=True).stdout.strip(),
              "python": platform.python_version(), "command": " ".join(sys.argv)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
