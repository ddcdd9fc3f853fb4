"""Pictures of enrolled faces live in the gallery, in the same change as their face (#29 item 3), and a
search names each match's face so that its picture needs no look-up per match (#27 item 5)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="the gallery extra is not installed")

from serve_support import API_KEY, BASE_URL, MODEL, make_service, photo, upload  # noqa: E402

from irface.gallery import Gallery  # noqa: E402
from irface.gallery.journal import journal_path  # noqa: E402
from irface.serve import create_app  # noqa: E402

KEY = {"X-API-Key": API_KEY}


def test_a_picture_never_outlives_its_face(tmp_path):
    from fastapi.testclient import TestClient

    path = tmp_path / "faces.gallery"
    service = make_service(path)
    with TestClient(create_app(service, api_key=API_KEY), base_url=BASE_URL) as c:
        assert c.post("/v1/gallery/enroll", data={"identity": "obama"}, headers=KEY,
                      files=[upload(photo("obama", "obama.jpg"), "images")]).status_code == 200
        before_biden = journal_path(path).read_bytes()
        assert c.post("/v1/gallery/enroll", data={"identity": "biden"}, headers=KEY,
                      files=[upload(photo("biden", "biden.jpg"), "images")]).status_code == 200
        biden = service.gallery.faces("biden")[0]["id"]
        found = c.post("/v1/search", files=[upload(photo("biden", "biden2.jpg"))]).json()
        assert found["matches"][0]["thumbnail"] == f"/v1/gallery/thumbnail/{biden}"
        assert c.get(found["matches"][0]["thumbnail"]).headers["content-type"] == "image/jpeg"
        # Written with the face, into the gallery (no folder of pictures beside it).
        assert service.gallery.thumbnail(biden)[:2] == b"\xff\xd8"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.gallery", "faces.gallery.journal"]
        # A server killed before the enrolment was whole on disk (its record cut short): the face and its
        # picture are both absent.
        killed = tmp_path / "killed"
        killed.mkdir()
        (killed / "faces.gallery").write_bytes(path.read_bytes())
        full = journal_path(path).read_bytes()
        journal_path(killed / "faces.gallery").write_bytes(full[:len(before_biden) + (len(full) - len(before_biden)) // 2])
        after_kill = Gallery.open(killed / "faces.gallery")
        assert after_kill.identities() == ["obama"] and after_kill.thumbnail(biden) is None
    served = make_service(path)
    with TestClient(create_app(served, api_key=API_KEY), base_url=BASE_URL) as c:
        url = f"/v1/gallery/thumbnail/{biden}"
        assert c.get(url).status_code == 200
        assert c.delete("/v1/gallery/biden", headers=KEY).status_code == 200
        assert c.get(url).status_code == 404  # removed with its face, in the same change
    assert Gallery.open(path).thumbnail(biden) is None


def test_search_answers_name_the_face_and_need_no_look_up_per_match(tmp_path, monkeypatch):
    from irface.cli import main

    people = tmp_path / "people"
    for who, name in (("obama", "obama.jpg"), ("biden", "biden.jpg"), ("clapton", "clapton-1.jpg")):
        (people / who).mkdir(parents=True)
        (people / who / name).symlink_to(photo(who, name))
    path = tmp_path / "built.gallery"
    assert main(["gallery", "build", str(people), "--model", str(MODEL), "--output", str(path)]) == 0
    gallery = Gallery.open(path)
    rows = {f["id"]: f for f in gallery.faces()}
    for m in gallery.search(np.random.default_rng(0).normal(size=(2, 128)), top_k=3)[0]:
        assert m.source == rows[m.face_id]["source"] and list(m.box) == rows[m.face_id]["box"]
    service = make_service(path)

    def no_scan(*args, **kwargs):
        raise AssertionError("a search looked the gallery's faces up again")

    monkeypatch.setattr(service.gallery, "faces", no_scan)
    import io

    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(photo("obama", "obama2.jpg").read_bytes())).convert("RGB"))
    found = service.search(image, "obama2.jpg", top_k=3)
    assert [m["thumbnail"] for m in found["matches"]] == [f"/v1/gallery/thumbnail/{i}" for i in
                                                        [next(f for f in rows.values() if f["identity"] == m["identity"])["id"]
                                                         for m in found["matches"]]]
