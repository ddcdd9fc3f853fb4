"""32 clients at once against a live `irface serve` (uvicorn on a free port): no errors, no torn gallery."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="the gallery extra is not installed")
httpx = pytest.importorskip("httpx")

from serve_support import API_KEY, live_server, make_service, photo  # noqa: E402

from irface.serve import create_app  # noqa: E402

CLIENTS = 32
SMALL = [photo("clapton", "clapton-2.jpg"), photo("kit_harington", "john2.jpeg"), photo("clapton", "clapton-1.jpg")]
ENROL = {"lennon": photo("lennon", "lennon-1.jpg"), "rose": photo("rose_leslie", "img2.jpg"),
         "carell": photo("carell", "carell.jpg"), "adams": photo("adams", "adams.jpg")}


def test_32_concurrent_clients_verify_search_and_enrol_without_error(tmp_path):
    service = make_service(tmp_path / "faces.gallery")
    errors: list[str] = []
    searches: list[dict] = []
    start = threading.Barrier(CLIENTS + len(ENROL))
    with live_server(create_app(service, api_key=API_KEY)) as url:
        with httpx.Client(base_url=url, timeout=120) as c:
            assert c.post("/v1/gallery/enroll", data={"identity": "clapton"}, headers={"X-API-Key": API_KEY},
                          files=[("images", (SMALL[2].name, SMALL[2].read_bytes()))]).status_code == 200

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                start.wait()
                a, b = SMALL[i % 3], SMALL[(i + 1) % 3]
                if i % 2:
                    r = c.post("/v1/verify", files=[("a", (a.name, a.read_bytes())), ("b", (b.name, b.read_bytes()))])
                else:
                    r = c.post("/v1/search", files=[("image", (a.name, a.read_bytes()))])
                if r.status_code != 200:
                    errors.append(f"{r.request.url.path}: {r.status_code} {r.text}")
                elif i % 2 == 0:
                    searches.append(r.json())

        def enroller(identity: str) -> None:
            path = ENROL[identity]
            with httpx.Client(base_url=url, timeout=120) as c:
                start.wait()
                r = c.post("/v1/gallery/enroll", data={"identity": identity}, headers={"X-API-Key": API_KEY},
                           files=[("images", (path.name, path.read_bytes()))])
                if r.status_code != 200:
                    errors.append(f"enroll {identity}: {r.status_code} {r.text}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        threads += [threading.Thread(target=enroller, args=(name,)) for name in ENROL]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(searches) == CLIENTS // 2
    # Every search saw a whole gallery: clapton found, and only enrolled names, each once.
    for s in searches:
        names = [m["identity"] for m in s["matches"]]
        assert len(names) == len(set(names)) and set(names) <= {"clapton", *ENROL}
    assert {s["identity"] for s in searches if "clapton" in s["face"]["image"]} == {"clapton"}
    # Every acknowledged enrolment is in the file.
    from irface.gallery import Gallery

    assert Gallery.open(tmp_path / "faces.gallery").identities() == sorted(["clapton", *ENROL])
