"""Load generator for `irface serve`: requests/s and p50/p99 latency of /v1/verify and /v1/search.

    python benchmarks/serve_load.py                              # fixture model and photos, 1/8/32 clients
    python benchmarks/serve_load.py --clients 1 8 32 --requests 96 --json serve.json
    python benchmarks/serve_load.py --model run/ --photos people/ --clients 64 -- --device cuda

Starts a real server (`python -m irface serve`) on a free port of 127.0.0.1 with a new gallery,
enrols the first photo of every identity folder under --photos, then, for each endpoint and each
client count, runs that many client threads (one keep-alive connection each) until --requests
requests are answered. Verify compares photo pairs in turn; search looks up every photo. A request
fails on any status but 200 or any transport error; the run reports the failures, and exits 1 when
there are any. The clients run on the same machine as the server and take CPU from it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "realface"
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photos(folder: Path) -> dict[str, list[Path]]:
    people = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in SUFFIXES)
        if files:
            people[d.name] = files
    if not people:
        sys.exit(f"{folder}: no identity folders with photos")
    return people


def start_server(model: Path, gallery: Path, port: int, extra: list[str],
                 env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """`python -m irface serve` on 127.0.0.1:`port`, returned once /v1/health answers (exits the script if
    the server dies or stays silent for 180 s). Also used by serve_memory.py."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "irface", "serve", "--model", str(model), "--gallery", str(gallery),
                             "--port", str(port), *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).raise_for_status()
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                sys.exit(f"irface serve exited: {proc.stderr.read().strip()}")
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("irface serve did not answer within 180 s")
            time.sleep(0.2)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def run_level(url: str, endpoint: str, bodies: list, clients: int, requests: int) -> dict:
    """`clients` threads post `requests` requests in all to `endpoint`; latency of each, failures counted."""
    import httpx

    counter = itertools.count()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            barrier.wait()
            while (i := next(counter)) < requests:
                files = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = c.post(endpoint, files=files)
                    ok, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                dt = time.perf_counter() - t0
                with lock:
                    (latencies.append(dt) if ok else failures.append(why))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {"endpoint": endpoint, "clients": clients, "requests": requests, "failed": len(failures),
            "requests_per_s": len(lat) / elapsed, "p50_ms": 1000 * _percentile(lat, 50) if lat else None,
            "p99_ms": 1000 * _percentile(lat, 99) if lat else None, "seconds": elapsed,
            "first_failures": failures[:3]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=FIXTURES / "models" / "mobilefacenet_128d.onnx")
    p.add_argument("--photos", type=Path, default=FIXTURES / "photos", help="IDENTITY/*.jpg folders")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=96, help="requests per endpoint and client count")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests per endpoint first")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the figures as JSON to FILE (or stdout)")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: more `irface serve` options")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from irface.bench.machine import cpu_model
    from irface.cli._output import emit

    people = _photos(args.photos)
    every = [f for files in people.values() for f in files]
    search_bodies = [[("image", (f.name, f.read_bytes()))] for f in every]
    pairs = list(zip(every, every[1:] + every[:1]))
    verify_bodies = [[("a", (a.name, a.read_bytes())), ("b", (b.name, b.read_bytes()))] for a, b in pairs]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = [a for a in args.serve_args if a != "--"]
    with tempfile.TemporaryDirectory(prefix="irface-serve-bench-") as tmp:
        import httpx

        proc = start_server(args.model, Path(tmp) / "bench.gallery", port, extra)
        try:
            for name, files in people.items():
                r = httpx.post(url + "/v1/gallery/enroll", data={"identity": name}, timeout=300,
                               files=[("images", (files[0].name, files[0].read_bytes()))])
                if r.status_code != 200:
                    print(f"enrol {name}: {r.status_code} {r.text[:200]}", file=sys.stderr)
            load_before = os.getloadavg()
            results = []
            for endpoint, bodies in (("/v1/verify", verify_bodies), ("/v1/search", search_bodies)):
                run_level(url, endpoint, bodies, 1, args.warmup)
                for clients in args.clients:
                    results.append(run_level(url, endpoint, bodies, clients, max(args.requests, clients)))
            load_after = os.getloadavg()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report = {"date": started, "machine": cpu_model(),
              "cores": os.cpu_count(), "python": platform.python_version(), "model": str(args.model),
              "gallery_identities": len(people), "photos": len(every),
              "load_average_before": load_before[0], "load_average_after": load_after[0], "results": results}
    lines = [f"{report['date']}  {report['machine']} ({report['cores']} cores)  load average "
             f"{load_before[0]:.1f} -> {load_after[0]:.1f}",
             f"{'endpoint':<11} {'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}"]
    for r in results:
        lines.append(f"{r['endpoint']:<11} {r['clients']:>7} {r['requests']:>8} {r['failed']:>6} "
                     f"{r['requests_per_s']:>7.2f} {r['p50_ms'] or 0:>8.0f} {r['p99_ms'] or 0:>8.0f}")
    emit(report, args.json, "\n".join(lines))
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
