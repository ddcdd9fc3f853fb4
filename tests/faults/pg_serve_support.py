"""`irface serve --workers N` on a PostgreSQL gallery as a real process, for the fault and load tests.

Uploads are aligned 112x112 crops of the real-face fixtures (made once by the detector), so a worker
embeds them without detecting: thousands of requests stay cheap on two shared cores. Which worker holds
which database session is read from /proc (the session's client port against each worker's sockets),
so a test can kill exactly the worker that is inside a transaction.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Optional

import httpx
import numpy as np
import psycopg
from PIL import Image

from serve_support import API_KEY, MODEL, PHOTOS

KEY = {"X-API-Key": API_KEY}
START_S = 600  # N model loads on a busy 2-core machine: minutes


def aligned_crops(people: Iterable[str]) -> dict[str, list[bytes]]:
    """PNG bytes of each person's aligned face crops (112x112: the server takes them as aligned)."""
    from irface.detect import load_detector
    from irface.infer.photo import faces_from_file

    detector = load_detector()
    out: dict[str, list[bytes]] = {}
    for who in people:
        for path in sorted((PHOTOS / who).iterdir()):
            found = faces_from_file(path, detector=detector)
            assert found, path
            buf = io.BytesIO()
            Image.fromarray(np.asarray(found[0].crop)).save(buf, format="PNG")
            out.setdefault(who, []).append(buf.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`irface serve --model MOBILEFACENET --gallery URL --workers N` on a free loopback port."""

    def __init__(self, url: str, workers: int, log_path: Path):
        self.url = url
        self.base = f"http://127.0.0.1:{_free_port()}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = {**os.environ, "IRFACE_API_KEY": API_KEY, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "irface", "serve", "--model", str(MODEL), "--gallery", url, "--port",
             self.base.rsplit(":", 1)[1], "--workers", str(workers), "--device", "cpu"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.base, timeout=120)
        self.pids = self.wait_workers(workers)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_workers(self, count: int, exclude: Iterable[str] = ()) -> set[str]:
        """The pids of `count` workers (none in `exclude`) that answered /v1/health."""
        seen: set[str] = set()
        deadline = time.monotonic() + START_S
        with ThreadPoolExecutor(2 * count) as pool:
            while len(seen - set(exclude)) < count:
                assert self.proc.poll() is None, self.log()[-3000:]
                assert time.monotonic() < deadline, f"workers {seen} answered; log: {self.log()[-3000:]}"
                try:
                    answers = list(pool.map(lambda _: httpx.get(f"{self.base}/v1/health", timeout=30),
                                            range(2 * count)))
                    seen |= {r.headers["x-irface-worker"] for r in answers if r.status_code == 200}
                except httpx.TransportError:
                    time.sleep(0.5)
        return seen - set(exclude)

    def each_worker(self, method: str, path: str, count: int, **kw: Any) -> dict[str, httpx.Response]:
        """One answer from each of `count` workers to the same request (asked until all have answered).
        Each request on a new connection: a kept-alive one stays with the worker that accepted it."""
        got: dict[str, httpx.Response] = {}
        deadline = time.monotonic() + 120
        with ThreadPoolExecutor(2 * count) as pool:
            while len(got) < count:
                assert time.monotonic() < deadline, f"only workers {sorted(got)} answered: {self.log()[-2000:]}"
                for r in pool.map(lambda _: httpx.request(method, self.base + path, timeout=120, **kw),
                                  range(2 * count)):
                    got.setdefault(r.headers["x-irface-worker"], r)
        return got

    def pinned_clients(self, count: int) -> dict[str, httpx.Client]:
        """A client per worker, for `count` workers: each keeps one connection, which stays with the worker
        that accepted it (while kept alive: uvicorn closes it after 5 s idle, so use them at once)."""
        pinned: dict[str, httpx.Client] = {}
        deadline = time.monotonic() + 120
        while len(pinned) < count:
            assert time.monotonic() < deadline, f"only workers {sorted(pinned)} accepted a connection"
            client = httpx.Client(base_url=self.base, timeout=120, limits=httpx.Limits(max_connections=1))
            pid = client.get("/v1/health").headers["x-irface-worker"]
            if pid in pinned:
                client.close()
            else:
                pinned[pid] = client
        return pinned

    def enroll(self, identity: str, crops: list[bytes], client: Optional[httpx.Client] = None) -> httpx.Response:
        files = [("images", (f"{identity}-{k}.png", c, "image/png")) for k, c in enumerate(crops)]
        return (client or self.client).post("/v1/gallery/enroll", data={"identity": identity}, files=files,
                                            headers=KEY)

    def search(self, crop: bytes, client: Optional[httpx.Client] = None) -> httpx.Response:
        return (client or self.client).post("/v1/search", files=[("image", ("probe.png", crop, "image/png"))])

    def remove(self, identity: str, client: Optional[httpx.Client] = None) -> httpx.Response:
        return (client or self.client).delete(f"/v1/gallery/{identity}", headers=KEY)

    def close(self) -> str:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.log_path.read_text(errors="replace")


# ---- the database side ------------------------------------------------------------------------------
def faces_by_identity(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT identity, count(*) FROM irface_faces GROUP BY identity").fetchall())


def wait_for_backends(url: str, where: str, count: int, timeout: float = 120) -> list[tuple[int, int]]:
    """(backend pid, client port) of `count` irface sessions matching the SQL condition `where`."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute("SELECT pid, client_port FROM pg_stat_activity WHERE application_name = 'irface' "
                                f"AND state = 'active' AND {where}").fetchall()
            if len(rows) >= count:
                return rows
            assert time.monotonic() < deadline, f"{len(rows)} of {count} sessions reached: {where}"
            time.sleep(0.05)


def wait_backend_gone(url: str, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.05)


def process_of_client_port(port: int, pids: Iterable[str]) -> str:
    """Which of `pids` holds the local TCP socket bound to `port` (a database session's client side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    raise AssertionError(f"no worker holds the session on client port {port}")
