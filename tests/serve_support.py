"""Shared by the serve tests: the real-face fixtures, the served app, a live uvicorn on a free port."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

REALFACE = Path(__file__).parent / "fixtures" / "realface"
MODEL = REALFACE / "models" / "mobilefacenet_128d.onnx"
PHOTOS = REALFACE / "photos"
GROUP = REALFACE / "group" / "t1.jpg"
API_KEY = "test-key"
# The address a default server answers to: TestClient's own "testserver" is not an allowed host.
BASE_URL = "http://127.0.0.1:8000"


def photo(identity: str, name: str) -> Path:
    return PHOTOS / identity / name


def upload(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    return field, (path.name, path.read_bytes(), "application/octet-stream")


def make_service(gallery_path: Path) -> Any:
    from irface.infer import load_model
    from irface.serve import FaceService

    return FaceService.open(load_model(MODEL), gallery_path)


@contextlib.contextmanager
def live_server(app: Any, header_timeout: float = 10.0) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on a free port of 127.0.0.1; yields its base URL."""
    import uvicorn

    from irface.serve.http import server_config

    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, header_timeout=header_timeout))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (server.started and server.servers):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
