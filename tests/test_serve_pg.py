"""`irface serve` over a PostgreSQL gallery: two services (as two workers) share one gallery; a lost
database is a 503 in one line; `irface serve --workers 2` as a real process (slow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss")
psycopg = pytest.importorskip("psycopg")
httpx = pytest.importorskip("httpx")

from serve_support import API_KEY, BASE_URL, MODEL, photo, upload  # noqa: E402

from irface.cli import main  # noqa: E402

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def embedder_and_detector():
    from irface.detect import load_detector
    from irface.infer import load_model

    return load_model(MODEL), load_detector()


def _client(embedder_and_detector, url):
    from fastapi.testclient import TestClient

    from irface.serve import FaceService, create_app

    embedder, detector = embedder_and_detector
    return TestClient(create_app(FaceService.open(embedder, url, detector=detector), api_key=API_KEY), base_url=BASE_URL)


def test_two_services_share_one_postgres_gallery(embedder_and_detector, pg_url):
    with _client(embedder_and_detector, pg_url) as a, _client(embedder_and_detector, pg_url) as b:
        r = a.post("/v1/gallery/enroll", data={"identity": "obama"}, headers=KEY,
                   files=[upload(photo("obama", "obama.jpg"), "images"), upload(photo("obama", "obama1.jpg"), "images")])
        assert r.status_code == 200, r.text
        found = b.post("/v1/search", files=[upload(photo("obama", "obama2.jpg"))]).json()
        assert found["identity"] == "obama"
        thumb = b.get(found["matches"][0]["thumbnail"])  # stored by a, served by b
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert b.get("/v1/gallery").json()["names"] == ["obama"]
        assert b.delete("/v1/gallery/obama", headers=KEY).json()["removed"] == 2
        assert a.post("/v1/search", files=[upload(photo("obama", "obama2.jpg"))]).json()["matches"] == []
        assert a.get(found["matches"][0]["thumbnail"]).status_code == 404  # the picture went with its face
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM irface_thumbnails").fetchone()[0] == 0


def test_a_lost_database_is_503_then_served_again(embedder_and_detector, pg_url):
    with _client(embedder_and_detector, pg_url) as a:
        assert a.post("/v1/gallery/enroll", data={"identity": "biden"}, headers=KEY,
                      files=[upload(photo("biden", "biden.jpg"), "images")]).status_code == 200
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the server drops our session, as a restart does
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'irface' AND pid <> pg_backend_pid()")
        r = a.post("/v1/search", files=[upload(photo("biden", "biden2.jpg"))])
        assert r.status_code == 503 and "unavailable" in r.json()["detail"] and "\n" not in r.json()["detail"]
        assert a.post("/v1/search", files=[upload(photo("biden", "biden2.jpg"))]).json()["identity"] == "biden"


def test_workers_with_a_gallery_file_are_refused_in_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(MODEL), "--gallery", str(tmp_path / "g.gallery"), "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a gallery file is served by one process" in err
    assert not (tmp_path / "g.gallery").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_two_workers_enrol_on_one_find_on_the_other(tmp_path, pg_server):
    """The README's commands: build into PostgreSQL, serve it with 2 workers; a face enrolled through one
    worker is found by a search the other answers (workers told apart by the X-Irface-Worker header)."""
    url = pg_server.url(pg_server.new_database(), tcp=True)
    people = tmp_path / "people"
    for who, name in (("biden", "biden.jpg"), ("carell", "carell.jpg")):
        (people / who).mkdir(parents=True)
        (people / who / name).symlink_to(photo(who, name))
    assert main(["gallery", "build", str(people), "--model", str(MODEL), "--output", url, "--device", "cpu"]) == 0
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "irface", "serve", "--model", str(MODEL), "--gallery", url,
                             "--port", str(port), "--workers", "2", "--device", "cpu"],
                            env={**os.environ, "IRFACE_API_KEY": API_KEY}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # Both workers up: every answer names its worker; ask until two have answered.
        workers: set[str] = set()
        deadline = time.monotonic() + 400  # two model loads on a busy 2-core machine: minutes
        while len(workers) < 2:
            assert proc.poll() is None, proc.stdout.read()
            if time.monotonic() > deadline:
                proc.terminate()
                pytest.fail(f"only workers {workers} answered: {proc.communicate(timeout=60)[0][-3000:]}")
            try:
                with ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(lambda _: httpx.get(f"{base}/v1/health", timeout=30), range(8)))
                workers |= {r.headers["x-irface-worker"] for r in answers if r.status_code == 200}
            except httpx.TransportError:
                time.sleep(0.5)
        assert all(h.json()["gallery"]["faces"] == 2 for h in answers)
        path = photo("obama", "obama.jpg")
        r = httpx.post(f"{base}/v1/gallery/enroll", data={"identity": "obama"}, headers=KEY,
                       files=[("images", (path.name, path.read_bytes()))], timeout=60)
        assert r.status_code == 200, r.text
        enrolled_by = r.headers["x-irface-worker"]
        probe = photo("obama", "obama2.jpg").read_bytes()

        def search(_):
            return httpx.post(f"{base}/v1/search", files=[("image", ("obama2.jpg", probe))], timeout=60)

        others = []
        for _ in range(20):  # every search finds the face; stop once the other worker has answered one
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(search, range(4)))
            assert all(a.status_code == 200 and a.json()["identity"] == "obama" for a in answers)
            others += [a for a in answers if a.headers["x-irface-worker"] != enrolled_by]
            if others:
                break
        assert others, "the other worker never answered a search"
        assert others[0].headers["x-irface-worker"] in workers
        pic = httpx.get(base + others[0].json()["matches"][0]["thumbnail"], timeout=30)
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/jpeg"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert url.split(":")[2].split("@")[0] not in out  # the password is never printed
