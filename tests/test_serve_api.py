"""`irface serve`'s REST API on real photos with a real face model (FastAPI's TestClient)."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="the gallery extra is not installed")

from serve_support import API_KEY, BASE_URL, GROUP, MODEL, make_service, photo, upload  # noqa: E402

from irface.serve import Limits, create_app  # noqa: E402

OBAMA, OBAMA_2, OBAMA_3 = photo("obama", "obama.jpg"), photo("obama", "obama1.jpg"), photo("obama", "obama2.jpg")
BIDEN, BIDEN_2 = photo("biden", "biden.jpg"), photo("biden", "biden2.jpg")
CARELL = photo("carell", "carell.jpg")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return make_service(tmp_path_factory.mktemp("serve") / "faces.gallery")


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    app = create_app(service, api_key=API_KEY, limits=Limits(max_request_bytes=4 * 1024 * 1024, max_pixels=5_000_000))
    with TestClient(app, base_url=BASE_URL) as c:
        yield c


def _png(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header then claims `width` x `height` (an image bomb's shape)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 120, 120)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def test_health_names_model_threshold_and_gallery(client):
    r = client.get("/v1/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["model"].endswith("mobilefacenet_128d.onnx")
    assert h["embedding_size"] == 128 and h["threshold_source"] == "default"
    assert h["gallery"]["faces"] == 0


def test_verify_same_person_and_different_people_with_boxes(client):
    same = client.post("/v1/verify", files=[upload(OBAMA, "a"), upload(OBAMA_2, "b")]).json()
    diff = client.post("/v1/verify", files=[upload(OBAMA, "a"), upload(BIDEN, "b")]).json()
    assert same["same"] is True and same["similarity"] > same["threshold"]
    assert diff["same"] is False and diff["similarity"] < same["similarity"]
    for side in (same["a"], same["b"], diff["b"]):
        x1, y1, x2, y2 = side["box"]
        assert 0 <= x1 < x2 <= side["width"] and 0 <= y1 < y2 <= side["height"]
        assert len(side["landmarks"]) == 5
    # A threshold given with the request is used, and said to be.
    strict = client.post("/v1/verify", files=[upload(OBAMA, "a"), upload(OBAMA_2, "b")],
                         data={"threshold": "0.99"}).json()
    assert strict["same"] is False and strict["threshold_source"] == "argument"
    assert client.post("/v1/verify", files=[upload(OBAMA, "a"), upload(OBAMA_2, "b")],
                       data={"threshold": "3"}).status_code == 422


def test_detect_finds_every_face_of_the_group_photo(client):
    r = client.post("/v1/detect", files=[upload(GROUP)]).json()
    assert len(r["faces"]) == 6 and (r["width"], r["height"]) == (1280, 886)


def test_detect_answers_faces_as_irface_detect_json_does(client, capsys):
    from irface.cli import main

    served = client.post("/v1/detect", files=[upload(GROUP)]).json()
    assert main(["detect", str(GROUP), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # One serialiser: the same boxes, scores and landmarks (the server adds the photo's name and size).
    assert [{k: f[k] for k in ("box", "score", "landmarks")} for f in served["faces"]] == printed["faces"]
    assert any(v != round(v, 1) for f in served["faces"] for v in f["box"])  # kept to 2 decimals, not 1


def test_embed_is_unit_length_and_matches_a_second_photo(client):
    a = client.post("/v1/embed", files=[upload(OBAMA)]).json()
    b = client.post("/v1/embed", files=[upload(OBAMA_2)]).json()
    ea, eb = np.array(a["faces"][0]["embedding"]), np.array(b["faces"][0]["embedding"])
    assert a["embedding_size"] == 128 and abs(np.linalg.norm(ea) - 1) < 1e-4
    verify = client.post("/v1/verify", files=[upload(OBAMA, "a"), upload(OBAMA_2, "b")]).json()
    assert abs(float(ea @ eb) - verify["similarity"]) < 1e-4
    group = client.post("/v1/embed", files=[upload(GROUP)], data={"all_faces": "true"}).json()
    assert len(group["faces"]) == 6


def test_enroll_search_thumbnail_and_remove(client, service):
    r = client.post("/v1/gallery/enroll", data={"identity": "obama"},
                    files=[upload(OBAMA, "images"), upload(OBAMA_2, "images")], headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2
    r = client.post("/v1/gallery/enroll", data={"identity": "biden"}, files=[upload(BIDEN, "images")],
                    headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    # A held-out photo of an enrolled person: found at rank 1, its picture served.
    found = client.post("/v1/search", files=[upload(OBAMA_3)]).json()
    assert found["identity"] == "obama" and found["matches"][0]["accepted"]
    assert [m["identity"] for m in found["matches"]] == ["obama", "biden"]
    thumb = client.get(found["matches"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert client.post("/v1/search", files=[upload(BIDEN_2)]).json()["identity"] == "biden"
    # Someone never enrolled is nobody.
    stranger = client.post("/v1/search", files=[upload(CARELL)]).json()
    assert stranger["identity"] == "unknown" and not stranger["matches"][0]["accepted"]
    assert client.get("/v1/gallery").json()["names"] == ["biden", "obama"]
    # Removed: gone from the search, from the file and from the pictures.
    assert client.delete("/v1/gallery/obama", headers={"X-API-Key": API_KEY}).json()["removed"] == 2
    again = client.post("/v1/search", files=[upload(OBAMA_3)]).json()
    assert [m["identity"] for m in again["matches"]] == ["biden"]
    assert client.get(found["matches"][0]["thumbnail"]).status_code == 404
    assert client.delete("/v1/gallery/obama", headers={"X-API-Key": API_KEY}).status_code == 404
    from irface.gallery import Gallery

    assert Gallery.open(service.gallery.path).identities() == ["biden"]


def test_an_acknowledged_enrolment_is_in_the_file(client, service):
    from irface.gallery import Gallery

    r = client.post("/v1/gallery/enroll", data={"identity": "Rose Leslie"},
                    files=[upload(photo("rose_leslie", "img1.jpg"), "images")], headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text
    reopened = Gallery.open(service.gallery.path, fingerprint=service.gallery.fingerprint)
    assert "Rose Leslie" in reopened.identities()
    probe = client.post("/v1/embed", files=[upload(photo("rose_leslie", "img2.jpg"))]).json()
    assert reopened.search(np.array([probe["faces"][0]["embedding"]]), top_k=1)[0][0].identity == "Rose Leslie"


def test_gallery_changes_need_the_key(client, service):
    before = service.gallery.info()["faces"]
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = client.post("/v1/gallery/enroll", data={"identity": "mallory"}, files=[upload(CARELL, "images")],
                        headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert client.delete("/v1/gallery/biden", headers=headers).status_code == 401
    assert service.gallery.info()["faces"] == before
    # Reading needs no key.
    assert client.post("/v1/search", files=[upload(CARELL)]).status_code == 200


def test_a_form_posted_from_another_site_is_refused(client, service):
    before = service.gallery.info()["faces"]
    for origin in ("http://evil.example", "null", "http://127.0.0.1:8000.evil.example"):
        r = client.post("/v1/gallery/enroll", data={"identity": "csrf"}, files=[upload(CARELL, "images")],
                        headers={"X-API-Key": API_KEY, "Origin": origin})
        assert r.status_code == 403 and "another site" in r.json()["detail"]
    assert service.gallery.info()["faces"] == before
    # The server's own page (same origin) and clients that send no Origin (curl) are served.
    assert client.post("/v1/search", files=[upload(CARELL)], headers={"Origin": BASE_URL}).status_code == 200


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\\b", "..", "", " x", "x" * 200, "bad\nname"])
def test_identity_names_with_path_or_control_characters_are_refused(client, service, name):
    before = service.gallery.info()["faces"]
    r = client.post("/v1/gallery/enroll", data={"identity": name}, files=[upload(CARELL, "images")],
                    headers={"X-API-Key": API_KEY})
    assert r.status_code == 422, r.text
    assert service.gallery.info()["faces"] == before


def test_enrol_skips_a_photo_without_a_face_and_keeps_the_rest(client):
    blank = _encoded(np.full((300, 300, 3), 128, np.uint8), "PNG")
    r = client.post("/v1/gallery/enroll", data={"identity": "carell"}, headers={"X-API-Key": API_KEY},
                    files=[("images", ("blank.png", blank, "image/png")), upload(CARELL, "images")])
    body = r.json()
    assert r.status_code == 200 and body["added"] == 1
    assert body["skipped"][0]["image"] == "blank.png" and "no face" in body["skipped"][0]["reason"]
    only_blank = client.post("/v1/gallery/enroll", data={"identity": "nobody"}, headers={"X-API-Key": API_KEY},
                             files=[("images", ("blank.png", blank, "image/png"))])
    assert only_blank.status_code == 422
    assert "nobody" not in client.get("/v1/gallery").json()["names"]


def test_content_is_checked_by_decoding_not_by_name_or_type(client):
    # Not an image, though named and declared as one.
    r = client.post("/v1/verify", files=[("a", ("x.jpg", b"GIF89a but not really", "image/jpeg")),
                                         upload(OBAMA, "b")])
    assert r.status_code == 400 and "x.jpg" in r.json()["detail"]
    # A cut-off JPEG.
    data = OBAMA.read_bytes()
    r = client.post("/v1/detect", files=[("image", ("cut.jpg", data[: len(data) // 3], "image/jpeg"))])
    assert r.status_code == 400 and "cut.jpg" in r.json()["detail"]
    # A real image whose name and type lie (a PNG called .txt) is fine.
    r = client.post("/v1/detect", files=[("image", ("photo.txt", _encoded(np.asarray(_decoded(OBAMA)), "PNG"),
                                                    "text/plain"))])
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    # A format off the allow-list is refused unread.
    tiff = _encoded(np.zeros((16, 16, 3), np.uint8), "TIFF")
    assert client.post("/v1/detect", files=[("image", ("a.tif", tiff, "image/tiff"))]).status_code == 415
    assert client.post("/v1/detect", files=[("image", ("e.jpg", b"", "image/jpeg"))]).status_code == 400


def _decoded(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_image_bombs_are_refused_before_decoding(client):
    # 30,000 x 30,000 pixels claimed by a few hundred bytes: over the 5 MP limit, and over Pillow's own.
    for w, h in ((30_000, 30_000), (3000, 3000)):
        r = client.post("/v1/detect", files=[("image", ("bomb.png", _png(w, h), "image/png"))])
        assert r.status_code in (400, 413), r.text
        assert "bomb.png" in r.json()["detail"] and "pixels" in r.json()["detail"]


def test_request_body_over_the_limit_is_refused(client):
    big = b"\xff\xd8\xff" + bytes(5 * 1024 * 1024)
    r = client.post("/v1/detect", files=[("image", ("big.jpg", big, "image/jpeg"))])
    assert r.status_code == 413 and "larger than allowed" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(6):
            yield bytes(1024 * 1024)

    r = client.post("/v1/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def test_missing_or_mistyped_fields_are_one_line(client):
    r = client.post("/v1/search", files=[upload(OBAMA)], data={"top_k": "many"})
    assert r.status_code == 422 and r.json()["detail"].startswith("top_k: ")
    r = client.post("/v1/verify", files=[upload(OBAMA, "a")])
    assert r.status_code == 422 and r.json()["detail"].startswith("b: ")
    assert client.post("/v1/search", files=[upload(OBAMA)], data={"top_k": "0"}).status_code == 422


def test_a_photo_without_a_face_is_422_naming_it(client):
    blank = _encoded(np.full((200, 240, 3), 30, np.uint8), "JPEG")
    r = client.post("/v1/verify", files=[("a", ("wall.jpg", blank, "image/jpeg")), upload(OBAMA, "b")])
    assert r.status_code == 422 and r.json()["detail"] == "wall.jpg: no face found"


def test_page_and_openapi_are_served_without_anything_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")
    spec = client.get("/openapi.json").json()
    assert {"/v1/verify", "/v1/search", "/v1/gallery/enroll", "/v1/gallery/{identity}", "/v1/health"} <= set(spec["paths"])
    # /docs works offline: every script, style and icon it names is served here.
    docs = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and client.get(asset).status_code == 200, asset


def test_search_without_a_gallery_says_how_to_get_one(service):
    from fastapi.testclient import TestClient

    from irface.serve import FaceService

    bare = FaceService(service.embedder, service.detector)
    with TestClient(create_app(bare), base_url=BASE_URL) as c:
        r = c.post("/v1/search", files=[upload(OBAMA)])
        assert r.status_code == 409 and "--gallery" in r.json()["detail"]
        assert c.post("/v1/verify", files=[upload(OBAMA, "a"), upload(OBAMA_2, "b")]).json()["same"] is True


def test_a_gallery_built_by_irface_gallery_is_served_with_pictures_cut_from_its_photos(tmp_path, service):
    import shutil

    from fastapi.testclient import TestClient
    from PIL import Image

    from irface.cli import main
    from irface.serve import FaceService

    people = tmp_path / "people"
    for who, name in (("obama", "obama.jpg"), ("biden", "biden.jpg"), ("clapton", "clapton-1.jpg")):
        (people / who).mkdir(parents=True)
        shutil.copy(photo(who, name), people / who / name)
    gallery = tmp_path / "built.gallery"
    assert main(["gallery", "build", str(people), "--model", service.embedder.info["path"],
                 "--output", str(gallery)]) == 0
    served = FaceService.open(service.embedder, gallery, detector=service.detector)
    with TestClient(create_app(served), base_url=BASE_URL) as c:
        r = c.post("/v1/search", files=[upload(OBAMA_3)]).json()
        # The photo's name only: where the server keeps its files is not the client's to know.
        assert r["identity"] == "obama" and r["matches"][0]["source"] == "obama.jpg"
        for answer in (r, c.get("/v1/health").json(), c.get("/v1/gallery").json()):
            assert str(tmp_path) not in json.dumps(answer) and str(MODEL.parent) not in json.dumps(answer)
        pic = c.get(r["matches"][0]["thumbnail"])
        assert pic.status_code == 200
        # The face, not the whole 910x1137 photo: cut at the stored box plus 30% a side, then shrunk.
        from irface.gallery import Gallery

        x1, y1, x2, y2 = Gallery.open(gallery).faces("obama")[0]["box"]
        dx, dy = 0.3 * (x2 - x1), 0.3 * (y2 - y1)
        cut = Image.new("RGB", (min(910, int(x2 + dx) + 1) - max(0, int(x1 - dx)),
                                min(1137, int(y2 + dy) + 1) - max(0, int(y1 - dy))))
        cut.thumbnail((160, 160))
        assert Image.open(io.BytesIO(pic.content)).size == cut.size != (128, 160)
        assert c.get("/v1/gallery/thumbnail/" + "0" * 24).status_code == 404
        assert c.get("/v1/gallery/thumbnail/999999").status_code == 404
        assert c.get("/v1/gallery/thumbnail/..%2F..%2Fetc").status_code == 404
