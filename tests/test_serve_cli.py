"""`irface serve` on the command line: a real server process, and one-line refusals before it starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="the gallery extra is not installed")
httpx = pytest.importorskip("httpx")

from serve_support import MODEL, photo  # noqa: E402

from irface.cli import main  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a server subprocess
def test_irface_serve_answers_on_localhost_and_creates_the_gallery(tmp_path):
    port = _free_port()
    gallery = tmp_path / "new.gallery"
    env = {**os.environ, "IRFACE_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "irface", "serve", "--model", str(MODEL), "--gallery", str(gallery),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "irface serve did not answer"
                time.sleep(0.2)
        assert health["gallery"]["faces"] == 0 and gallery.is_file()
        # The key comes from $IRFACE_API_KEY.
        path = photo("clapton", "clapton-2.jpg")
        files = [("images", (path.name, path.read_bytes()))]
        url = f"http://127.0.0.1:{port}/v1/gallery/enroll"
        assert httpx.post(url, data={"identity": "clapton"}, files=files, timeout=60).status_code == 401
        assert httpx.post(url, data={"identity": "clapton"}, files=files, headers={"X-API-Key": "k"},
                          timeout=60).status_code == 200
        # A DNS-rebinding page's request (its name now resolves here): refused, even with the key.
        rebound = httpx.post(url, data={"identity": "rebound"}, files=files, timeout=60,
                             headers={"X-API-Key": "k", "Host": f"evil.example:{port}",
                                      "Origin": f"http://evil.example:{port}"})
        assert rebound.status_code == 421 and "evil.example" in rebound.json()["detail"]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/gallery", timeout=30).json()["names"] == ["clapton"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_a_gallery_from_another_model_is_refused_with_one_line(tmp_path, capsys):
    from irface.gallery import Gallery

    other = Gallery.create(tmp_path / "other.gallery", fingerprint="sha256:" + "0" * 64, embedding_size=128)
    other.save()
    err = _one_line_error(capsys, ["serve", "--model", str(MODEL), "--gallery", str(tmp_path / "other.gallery")])
    assert "another model" in err


def test_a_corrupted_gallery_is_refused_with_one_line(tmp_path, capsys):
    from irface.gallery import Gallery, model_fingerprint

    path = tmp_path / "g.gallery"
    g = Gallery.create(path, fingerprint=model_fingerprint(MODEL), embedding_size=128)
    g.add("someone", [[1.0] + [0.0] * 127], ["a.jpg"])
    g.save()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    err = _one_line_error(capsys, ["serve", "--model", str(MODEL), "--gallery", str(path)])
    assert str(path) in err


def test_bad_port_is_refused(capsys):
    assert "--port" in _one_line_error(capsys, ["serve", "--model", str(MODEL), "--port", "70000"])
