"""What the server does, without HTTP: photos in, faces, decisions and gallery changes out.

Every method is synchronous and safe to call from many threads at once (the app runs them in its
thread pool, off the event loop). The model runs in one thread (`EmbedBatcher`). The gallery has
its own readers-writer lock, so a search never sees an enrolment half applied; a change returns only
once its store holds it (the file's journal, synced; or the committed PostgreSQL transaction), so each
is answered only then. With a PostgreSQL gallery several such processes serve one gallery.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irface.errors import UserError
from irface.infer.model_file import Embedder
from irface.infer.verify import choose_threshold
from irface.serve.batcher import EmbedBatcher
from irface.serve.limits import RequestError
from irface.serve.thumbnails import Thumbnails, thumbnail_jpeg

log = logging.getLogger(__name__)

MAX_TOP_K = 100
# Sources of faces enrolled through the server: no file behind them, their picture is stored.
UPLOAD_PREFIX = "upload:"


def public_path(path: Optional[str | Path]) -> Optional[str]:
    """A server-side path as an answer may show it: as the operator gave it when relative, else its name;
    a database URL as scheme, host and database only (no user, password, socket folder or options).

    Answers go to whoever reaches the port; where this machine keeps its files is none of theirs.
    """
    if path is None:
        return None
    from irface.gallery import is_url

    if is_url(path):
        from urllib.parse import urlsplit

        url = urlsplit(str(path))
        host = url.hostname if url.hostname and not url.hostname.startswith("/") else ""
        return f"{url.scheme}://{host}{url.path}"
    p = Path(path)
    return str(p) if not p.is_absolute() and ".." not in p.parts else p.name


def _public_source(source: Optional[str]) -> Optional[str]:
    # An upload's source is its identity, file name and hash; a photo file's is a path of this machine.
    return source if source is None or source.startswith(UPLOAD_PREFIX) else public_path(source)


def _face_json(face: Any, photo: np.ndarray, name: str) -> dict[str, Any]:
    """Where the face is in the photo; a photo taken as an aligned crop is its own box."""
    from irface.detect.retinaface import face_json

    box = face.box if face.box is not None else (0, 0, photo.shape[1], photo.shape[0])
    return {"image": name, "width": int(photo.shape[1]), "height": int(photo.shape[0]),
            **face_json(box, face.score, face.landmarks)}


@dataclass
class FoundFace:
    """The largest face of a photo: what to embed (`face.crop`) and its description in an answer."""

    face: Any
    json: dict[str, Any]


def _remove_crash_leftovers(gallery: str | Path) -> None:
    """A server killed while saving leaves the half-written gallery under a temporary name: delete those."""
    from irface.utils import remove_stale_temporaries

    removed = remove_stale_temporaries(gallery)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted save of %s", len(removed), gallery)


class FaceService:
    def __init__(self, embedder: Embedder, detector: Any, gallery: Any = None, threshold: Optional[float] = None):
        self.embedder = embedder
        self.detector = detector
        self.batcher = EmbedBatcher(embedder)
        self.threshold, self.threshold_source = choose_threshold(embedder, threshold)
        self.gallery = gallery
        self.thumbnails = Thumbnails(gallery) if gallery is not None else None

    @classmethod
    def open(cls, embedder: Embedder, gallery: Optional[str | Path] = None, *, detector: Any = None,
             threshold: Optional[float] = None) -> "FaceService":
        """Serve `embedder` (from `load_model`); the gallery (a file or a postgresql:// URL) is opened, or
        created empty if the file is new or the database empty.

        A gallery built with another model, or damaged, is refused (GalleryError, one line).
        """
        if detector is None:
            from irface.detect import load_detector

            detector = load_detector()
        opened = None
        if gallery is not None:
            from irface.gallery import is_url, model_fingerprint, open_gallery

            fingerprint = model_fingerprint(embedder)
            if not is_url(gallery):
                _remove_crash_leftovers(gallery)
            opened = open_gallery(gallery, fingerprint=fingerprint,
                                  create={"fingerprint": fingerprint, "embedding_size": embedder.embedding_size,
                                          "model": embedder.info.get("path")})
        return cls(embedder, detector, opened, threshold)

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        self.batcher.close()
        if self.gallery is not None:
            self.gallery.close()  # a file gallery folds its journal in; a database connection is closed

    def _threshold(self, threshold: Optional[float]) -> tuple[float, str]:
        if threshold is None:
            return self.threshold, self.threshold_source
        try:
            return choose_threshold(self.embedder, threshold)
        except UserError as e:
            raise RequestError(str(e).replace("--threshold", "threshold"), 422) from None

    # --- faces -------------------------------------------------------------------------------
    def _faces(self, photo: np.ndarray, name: str, all_faces: bool = False) -> list[Any]:
        from irface.infer.photo import faces_from_image

        faces = faces_from_image(photo, name, mode="auto", all_faces=all_faces, detector=self.detector,
                                 size=self.embedder.input_size)
        if not faces:
            raise RequestError(f"{name}: no face found", 422)
        return faces

    def detect(self, photo: np.ndarray, name: str) -> dict[str, Any]:
        """Every face the detector finds (none is an answer, not an error)."""
        faces = self.detector.detect(photo)
        return {"image": name, "width": int(photo.shape[1]), "height": int(photo.shape[0]),
                "faces": [_face_json(f, photo, name) for f in faces]}

    def embed(self, photo: np.ndarray, name: str, all_faces: bool = False) -> dict[str, Any]:
        faces = self._faces(photo, name, all_faces)
        emb = self.batcher.embed(np.stack([f.crop for f in faces]))
        return {"image": name, "embedding_size": int(emb.shape[1]), "normalized": True,
                "faces": [{**_face_json(f, photo, f.name), "embedding": e.tolist()} for f, e in zip(faces, emb)]}

    def largest_face(self, photo: np.ndarray, name: str) -> "FoundFace":
        """The photo's largest face (RequestError 422 when none), described for an answer.

        All a verification or an enrolment keeps of a photo: the photo itself can be let go.
        """
        face = self._faces(photo, name)[0]
        return FoundFace(face, _face_json(face, photo, name))

    def verify(self, photo_a: np.ndarray, name_a: str, photo_b: np.ndarray, name_b: str,
               threshold: Optional[float] = None) -> dict[str, Any]:
        """Same person? The largest face of each photo, compared as `irface verify` compares crops."""
        self._threshold(threshold)
        return self.verify_faces(self.largest_face(photo_a, name_a), self.largest_face(photo_b, name_b), threshold)

    def verify_faces(self, a: "FoundFace", b: "FoundFace", threshold: Optional[float] = None) -> dict[str, Any]:
        from irface.infer.verify import compare_faces

        t, source = self._threshold(threshold)
        result = compare_faces(self.batcher, a.face, b.face, t)
        return {"similarity": result["similarity"], "threshold": t, "threshold_source": source,
                "same": result["same"], "a": a.json, "b": b.json}

    # --- gallery -----------------------------------------------------------------------------
    def _need_gallery(self) -> Any:
        if self.gallery is None:
            raise RequestError("no gallery: start the server with --gallery G", 409)
        return self.gallery

    def search(self, photo: np.ndarray, name: str, top_k: int = 5,
               threshold: Optional[float] = None) -> dict[str, Any]:
        """The gallery's best matches for the photo's largest face; `identity` is "unknown" below the threshold."""
        from irface.gallery import decision

        gallery = self._need_gallery()
        if not 1 <= top_k <= MAX_TOP_K:
            raise RequestError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}", 422)
        t, source = self._threshold(threshold)
        found = self.largest_face(photo, name)
        emb = self.batcher.embed(found.face.crop[None])
        matches = gallery.search(emb, top_k=top_k, threshold=t)[0]
        # Each match carries its face's id: its picture's URL needs no look-up per match.
        rows = [{"identity": m.identity, "similarity": float(m.similarity), "source": _public_source(m.source),
                 "accepted": bool(m.accepted), "thumbnail": Thumbnails.url(m)} for m in matches]
        return {"identity": decision(matches), "threshold": t, "threshold_source": source, "matches": rows,
                "face": found.json}

    def enrolment_name(self, identity: str) -> str:
        """The name `identity` is enrolled under: checked, NFKC-normalised, free of look-alike letters.

        A name that differs from an enrolled one only in case (or NFKC form) is refused (409) by the
        gallery itself, inside its change (`irface.gallery.names.check_spellings`): it would be the same
        person under two names, and a check here could not see another worker's enrolment.
        """
        from irface.gallery import validate_identity
        from irface.gallery.names import check_lookalikes, normalize_identity

        self._need_gallery()
        return check_lookalikes(validate_identity(normalize_identity(identity)))

    def enrolment_face(self, photo: np.ndarray, name: str) -> "FoundFace | dict[str, str]":
        """The largest face of one photo to enrol, or the skip record of a photo without one."""
        try:
            return self.largest_face(photo, name)
        except UserError as e:
            return {"image": name, "reason": str(e)}

    def enroll(self, identity: str, photos: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
        """Add the largest face of each photo under `identity`, with its picture; returns once the gallery's
        store holds them (a failed write changes nothing, in memory or on disk).

        A photo without a face is a reported skip; none at all is an error and changes nothing.
        """
        identity = self.enrolment_name(identity)
        return self.enroll_faces(identity, [self.enrolment_face(photo, name) for name, photo in photos])

    def enroll_faces(self, identity: str, found: Sequence["FoundFace | dict[str, str]"]) -> dict[str, Any]:
        """`enroll` once each photo is reduced to its face (`enrolment_face`); `identity` from `enrolment_name`."""
        gallery = self._need_gallery()
        crops, sources, boxes, faces, skipped = [], [], [], [], []
        for item in found:
            if not isinstance(item, FoundFace):
                skipped.append(item)
                continue
            digest = hashlib.sha256(item.face.crop.tobytes()).hexdigest()[:12]
            crops.append(item.face.crop)
            sources.append(f"{UPLOAD_PREFIX}{identity}/{Path(item.json['image']).name}#{digest}")
            faces.append(item.json)
            boxes.append(item.json["box"])
        if not crops:
            raise RequestError(f"{identity}: no face found in any of the {len(found)} photo(s)", 422)
        emb = self.batcher.embed(np.stack(crops))
        # The pictures go in the same change as the faces: none is stored without its face, or outlives it.
        gallery.add(identity, emb, sources, boxes=boxes, thumbnails=[thumbnail_jpeg(c) for c in crops])
        return {"identity": identity, "added": len(crops), "faces": faces, "skipped": skipped}

    def remove(self, identity: str) -> dict[str, Any]:
        from irface.gallery import validate_identity
        from irface.gallery.names import normalize_identity

        gallery = self._need_gallery()
        identity = validate_identity(identity)
        # The name as enrolled now (NFKC), else as an older gallery may hold it; the faces' pictures go with
        # them, in the same change.
        normal = normalize_identity(identity)
        removed = gallery.remove(normal)
        if not removed and normal != identity:
            removed = gallery.remove(identity)
        else:
            identity = normal
        if not removed:
            raise RequestError(f"{identity}: not in the gallery", 404)
        return {"identity": identity, "removed": removed}

    def gallery_info(self) -> dict[str, Any]:
        return {**self._gallery_summary(), "names": self._need_gallery().identities()}

    def _gallery_summary(self) -> dict[str, Any]:
        info = self._need_gallery().info()
        return {**info, "path": public_path(info["path"]), "model": public_path(info.get("model"))}

    def thumbnail(self, key: str) -> Optional[bytes]:
        return None if self.thumbnails is None else self.thumbnails.get(key)

    def health(self) -> dict[str, Any]:
        gallery = None if self.gallery is None else self._gallery_summary()
        # `pid`: which worker answered (`irface serve --workers N` runs N processes behind one port).
        return {"status": "ok", "pid": os.getpid(), "model": public_path(self.embedder.info.get("path")),
                "embedding_size": self.embedder.embedding_size, "input_size": self.embedder.input_size,
                "threshold": self.threshold, "threshold_source": self.threshold_source, "gallery": gallery}
