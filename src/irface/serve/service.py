"""What the server does, without HTTP: photos in, faces, decisions and gallery changes out.

Every method is synchronous and safe to call from many threads at once (the app runs them in its
thread pool, off the event loop). The model runs in one thread (`EmbedBatcher`). The gallery has
its own readers-writer lock, so a search never sees an enrolment half applied; changes are also
serialised here so that each is answered only after the gallery file on disk holds it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irface.errors import UserError
from irface.infer.model_file import Embedder
from irface.infer.verify import choose_threshold
from irface.serve.batcher import EmbedBatcher
from irface.serve.limits import RequestError
from irface.serve.thumbnails import ThumbnailStore

log = logging.getLogger(__name__)

MAX_TOP_K = 100
# Sources of faces enrolled through the server: no file behind them, their picture is stored.
UPLOAD_PREFIX = "upload:"


def _face_json(face: Any, photo: np.ndarray, name: str) -> dict[str, Any]:
    """Where the face is in the photo; a photo taken as an aligned crop is its own box."""
    box = face.box if face.box is not None else (0, 0, photo.shape[1], photo.shape[0])
    return {"image": name, "width": int(photo.shape[1]), "height": int(photo.shape[0]),
            "box": [round(float(v), 1) for v in box],
            "score": None if face.score is None else round(float(face.score), 4),
            "landmarks": None if face.landmarks is None else np.round(np.asarray(face.landmarks, float), 1).tolist()}


class FaceService:
    def __init__(self, embedder: Embedder, detector: Any, gallery: Any = None, threshold: Optional[float] = None):
        self.embedder = embedder
        self.detector = detector
        self.batcher = EmbedBatcher(embedder)
        self.threshold, self.threshold_source = choose_threshold(embedder, threshold)
        self.gallery = gallery
        self.thumbnails = ThumbnailStore.beside(gallery.path) if gallery is not None else None
        self._change_lock = threading.Lock()

    @classmethod
    def open(cls, embedder: Embedder, gallery: Optional[str | Path] = None, *, detector: Any = None,
             threshold: Optional[float] = None) -> "FaceService":
        """Serve `embedder` (from `load_model`); the gallery is opened, or created empty if the file is new.

        A gallery built with another model, or damaged, is refused (GalleryError, one line).
        """
        if detector is None:
            from irface.detect import load_detector

            detector = load_detector()
        opened = None
        if gallery is not None:
            from irface.gallery import Gallery, model_fingerprint

            fingerprint = model_fingerprint(embedder)
            if Path(gallery).exists():
                opened = Gallery.open(gallery, fingerprint=fingerprint)
            else:
                opened = Gallery.create(gallery, fingerprint=fingerprint, embedding_size=embedder.embedding_size,
                                        model=embedder.info.get("path"))
                opened.save()
                log.info("created an empty gallery at %s", gallery)
        return cls(embedder, detector, opened, threshold)

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        self.batcher.close()

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

    def verify(self, photo_a: np.ndarray, name_a: str, photo_b: np.ndarray, name_b: str,
               threshold: Optional[float] = None) -> dict[str, Any]:
        """Same person? The largest face of each photo, compared as `irface verify` compares crops."""
        from irface.infer.verify import compare_faces

        t, source = self._threshold(threshold)
        face_a = self._faces(photo_a, name_a)[0]
        face_b = self._faces(photo_b, name_b)[0]
        result = compare_faces(self.batcher, face_a, face_b, t)
        return {"similarity": result["similarity"], "threshold": t, "threshold_source": source,
                "same": result["same"], "a": _face_json(face_a, photo_a, name_a), "b": _face_json(face_b, photo_b, name_b)}

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
        face = self._faces(photo, name)[0]
        emb = self.batcher.embed(face.crop[None])
        matches = gallery.search(emb, top_k=top_k, threshold=t)[0]
        rows = [{"identity": m.identity, "similarity": float(m.similarity), "source": m.source,
                 "accepted": bool(m.accepted), "thumbnail": self._thumbnail_url(gallery, m)} for m in matches]
        return {"identity": decision(matches), "threshold": t, "threshold_source": source, "matches": rows,
                "face": _face_json(face, photo, name)}

    def _thumbnail_url(self, gallery: Any, match: Any) -> Optional[str]:
        if match.source is None:
            return None
        box = None
        if not match.source.startswith(UPLOAD_PREFIX):  # a photo file: its picture is cut at the face's box
            box = next((row["box"] for row in gallery.faces(match.identity) if row["source"] == match.source), None)
        assert self.thumbnails is not None  # made with the gallery this match came from
        return self.thumbnails.url(match.source, box)

    def enroll(self, identity: str, photos: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
        """Add the largest face of each photo under `identity`; returns once the gallery file holds them.

        A photo without a face is a reported skip; none at all is an error and changes nothing.
        """
        from irface.gallery import validate_identity

        gallery = self._need_gallery()
        identity = validate_identity(identity)
        crops, sources, boxes, faces, skipped = [], [], [], [], []
        for name, photo in photos:
            try:
                face = self._faces(photo, name)[0]
            except UserError as e:
                skipped.append({"image": name, "reason": str(e)})
                continue
            digest = hashlib.sha256(face.crop.tobytes()).hexdigest()[:12]
            crops.append(face.crop)
            sources.append(f"{UPLOAD_PREFIX}{identity}/{Path(name).name}#{digest}")
            faces.append(_face_json(face, photo, name))
            boxes.append(faces[-1]["box"])
        if not crops:
            raise RequestError(f"{identity}: no face found in any of the {len(photos)} photo(s)", 422)
        emb = self.batcher.embed(np.stack(crops))
        assert self.thumbnails is not None  # made with the gallery
        with self._change_lock:
            written = [self.thumbnails.put(s, c) for s, c in zip(sources, crops)]
            try:
                gallery.add(identity, emb, sources, boxes=boxes)
                gallery.save()
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                self._reload()
                raise
        return {"identity": identity, "added": len(crops), "faces": faces, "skipped": skipped}

    def remove(self, identity: str) -> dict[str, Any]:
        from irface.gallery import validate_identity

        gallery = self._need_gallery()
        identity = validate_identity(identity)
        assert self.thumbnails is not None  # made with the gallery
        with self._change_lock:
            sources = [row["source"] for row in gallery.faces(identity)]
            removed = gallery.remove(identity)
            if removed:
                try:
                    gallery.save()
                except BaseException:
                    self._reload()
                    raise
                self.thumbnails.remove(sources)
        if not removed:
            raise RequestError(f"{identity}: not in the gallery", 404)
        return {"identity": identity, "removed": removed}

    def _reload(self) -> None:
        # A change that could not be saved: what is on disk is the truth, the change is dropped from memory.
        self.gallery = type(self.gallery).open(self.gallery.path, fingerprint=self.gallery.fingerprint)

    def gallery_info(self) -> dict[str, Any]:
        gallery = self._need_gallery()
        return {**gallery.info(), "names": gallery.identities()}

    def thumbnail(self, key: str) -> Optional[bytes]:
        return None if self.thumbnails is None else self.thumbnails.get(key)

    def health(self) -> dict[str, Any]:
        gallery = None if self.gallery is None else self.gallery.info()
        return {"status": "ok", "model": self.embedder.info.get("path"),
                "embedding_size": self.embedder.embedding_size, "input_size": self.embedder.input_size,
                "threshold": self.threshold, "threshold_source": self.threshold_source, "gallery": gallery}
