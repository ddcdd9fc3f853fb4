"""Peak memory of `irface serve` under large concurrent uploads (the probe of issue #29).

    python benchmarks/serve_memory.py                       # 8 verifies of two 6300x6300 PNGs, an enrolment of 20
    python benchmarks/serve_memory.py --side 4000 --clients 4 --json mem.json
    python benchmarks/serve_memory.py -- --max-request-pixels 1000000000   # more `irface serve` options

Each probe starts a fresh server (`python -m irface serve`, one process, on a free port of
127.0.0.1, with a new gallery and an API key) so that its peak resident memory (VmHWM in
/proc/PID/status) is the probe's own, then:

- verify: `--clients` threads post one /v1/verify each at once, both photos `--side` x `--side` PNGs;
- enrol: one /v1/gallery/enroll of `--enrol` such PNGs.

Each PNG is a grey canvas with a real face photo of the fixtures pasted at its centre (a few MB
sent, `--side`^2 pixels decoded). Reported per probe: resident memory after start, the peak, and
what is still held after the answers; and the statuses the server gave. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from serve_load import free_port, start_server  # noqa: E402  (benchmarks/ is not a package)

FIXTURES = ROOT / "tests" / "fixtures" / "realface"
KEY = "bench-key"


def _memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and its peak so far (VmHWM), in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _big_png(side: int, face: Path) -> bytes:
    from PIL import Image

    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    photo = Image.open(face).convert("RGB")
    canvas.paste(photo, ((side - photo.width) // 2, (side - photo.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _probe(name: str, model: Path, extra: list[str], send) -> dict:
    """Start a server, measure its memory around `send(url)`, stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="irface-serve-mem-") as tmp:
        proc = start_server(model, Path(tmp) / "mem.gallery", port, extra, env={**os.environ, "IRFACE_API_KEY": KEY})
        try:
            started = _memory_mb(proc.pid)
            t0 = time.perf_counter()
            statuses = send(f"http://127.0.0.1:{port}")
            seconds = time.perf_counter() - t0
            time.sleep(1.0)  # let freed memory go back before reading what is still held
            after = _memory_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"probe": name, "rss_start_mb": round(started["VmRSS"]), "peak_rss_mb": round(after["VmHWM"]),
            "rss_after_mb": round(after["VmRSS"]), "seconds": round(seconds, 1), "statuses": statuses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=FIXTURES / "models" / "mobilefacenet_128d.onnx")
    p.add_argument("--side", type=int, default=6300, help="each PNG is side x side pixels (default 6300)")
    p.add_argument("--clients", type=int, default=8, help="concurrent /v1/verify requests (default 8)")
    p.add_argument("--enrol", type=int, default=20, help="PNGs in the one enrolment (default 20)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the figures as JSON to FILE (or stdout)")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: more `irface serve` options")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import httpx

    from irface.bench.machine import cpu_model
    from irface.cli._output import emit

    extra = [a for a in args.serve_args if a != "--"]
    a = _big_png(args.side, FIXTURES / "photos" / "obama" / "obama.jpg")
    b = _big_png(args.side, FIXTURES / "photos" / "obama" / "obama1.jpg")

    def verify(url: str) -> dict[str, int]:
        statuses: dict[str, int] = {}
        lock = threading.Lock()
        barrier = threading.Barrier(args.clients)

        def one() -> None:
            with httpx.Client(timeout=600) as c:
                barrier.wait()
                r = c.post(url + "/v1/verify", files=[("a", ("a.png", a)), ("b", ("b.png", b))])
            with lock:
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

        threads = [threading.Thread(target=one) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statuses

    def enrol(url: str) -> dict[str, int]:
        files = [("images", (f"p{i}.png", a if i % 2 else b)) for i in range(args.enrol)]
        r = httpx.post(url + "/v1/gallery/enroll", data={"identity": "obama"}, files=files,
                       headers={"X-API-Key": KEY}, timeout=600)
        return {str(r.status_code): 1}

    load_before = os.getloadavg()[0]
    results = [_probe(f"{args.clients} x verify", args.model, extra, verify),
               _probe(f"enrol {args.enrol}", args.model, extra, enrol)]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": cpu_model(),
              "cores": os.cpu_count(), "python": platform.python_version(), "side": args.side,
              "png_kb": [round(len(a) / 1024), round(len(b) / 1024)], "serve_args": extra,
              "load_average_before": load_before, "load_average_after": os.getloadavg()[0], "results": results}
    lines = [f"{report['date']}  {report['machine']} ({report['cores']} cores)  load average "
             f"{load_before:.1f} -> {report['load_average_after']:.1f}  PNGs {args.side}x{args.side}, "
             f"{report['png_kb'][0]} and {report['png_kb'][1]} KB",
             f"{'probe':<14} {'start MB':>9} {'peak MB':>8} {'after MB':>9} {'s':>6}  statuses"]
    for r in results:
        lines.append(f"{r['probe']:<14} {r['rss_start_mb']:>9} {r['peak_rss_mb']:>8} {r['rss_after_mb']:>9} "
                     f"{r['seconds']:>6}  {r['statuses']}")
    emit(report, args.json, "\n".join(lines))
    return 0



if __name__ == "__main__":
    sys.exit(main())
