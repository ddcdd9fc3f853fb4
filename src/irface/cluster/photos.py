"""From photos to people: every face of every photo embedded (the photo pipeline of `irface embed`), then
clustered (`irface.cluster.graph`), optionally into a kept state; and evaluation against folder labels.

The strictness is one cosine-similarity threshold: `--threshold`, else the clustering threshold `irface
calibrate` wrote beside the model, else the one stored in the model (irface's checkpoints and exports carry
their validation's), else `DEFAULT_THRESHOLD` (`cluster_threshold`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irface.cluster.graph import assign, check_knobs, cluster_embeddings
from irface.cluster.settings import DEFAULT_MIN_FACES, DEFAULT_THRESHOLD
from irface.cluster.metrics import clustering_scores
from irface.cluster.state import ClusterState
from irface.errors import DataError
from irface.infer.embed import EmbedResult, embed_sources
from irface.infer.images import FaceSource, collect_faces
from irface.infer.model_file import Embedder

log = logging.getLogger(__name__)



def cluster_threshold(embedder: Embedder, threshold: Optional[float] = None) -> tuple[float, str]:
    """(threshold, its source: argument, calibration, model or default). Not the verify threshold: one fit
    for one pair merges a collection (docs/cluster.md). A calibrated or stored clustering threshold below
    `DEFAULT_THRESHOLD` is raised to it: the normal tail it comes from underestimates a real model's
    (fixture MobileFaceNet: 0.36 estimated on its 21 photos, 0.408 found on 49)."""
    from irface.infer.verify import choose_threshold

    if threshold is not None:
        return choose_threshold(embedder, threshold)
    if embedder.cluster_threshold is not None:
        return max(DEFAULT_THRESHOLD, embedder.cluster_threshold), str(embedder.cluster_threshold_source)
    if embedder.threshold is not None:
        log.info("%s: its %s holds a verify threshold but no clustering one; rerun irface calibrate to derive one",
                 embedder.info.get("path"), embedder.threshold_source)
    return DEFAULT_THRESHOLD, "default"


def _face_rows(result: EmbedResult, sources: Sequence[FaceSource]) -> list[dict[str, Any]]:
    """{"source", "face", "box", "score"} of each embedded face (the photo pipeline names them photo#k)."""
    names = {s.name for s in sources}
    rows = []
    for face in result.faces:
        name = face["name"]
        source, k = (name, 0) if name in names else (name.rsplit("#", 1)[0], int(name.rsplit("#", 1)[1]))
        rows.append({"source": source, "face": k, "box": face.get("box"), "score": face.get("score")})
    return rows


def embed_every_face(embedder: Embedder, sources: Sequence[FaceSource], *, all_faces: bool = True,
                     batch_size: int = 32, progress: bool = False, **face_options: Any
                     ) -> tuple[EmbedResult, list[dict[str, Any]]]:
    result = embed_sources(embedder, sources, batch_size, progress, all_faces=all_faces, **face_options)
    return result, _face_rows(result, sources)


def _no_face(sources: Sequence[FaceSource], result: EmbedResult) -> DataError:
    first = f" (first: {result.skipped[0]['reason']})" if result.skipped else ""
    return DataError(f"no face found in any of the {len(sources)} photos{first}")


def report(state: ClusterState, skipped: list[dict], added: int) -> dict[str, Any]:
    """The output object: model, people, every face with its person (-1 noise), the faces this run added
    (all of them but with an earlier state), what was skipped."""
    faces = [{**f, "cluster": int(c)} for f, c in zip(state.faces, state.labels)]
    return {"model": state.model, "clusters": len(state.people()), "faces": faces,
            "noise": int((state.labels < 0).sum()), "threshold": state.threshold,
            "threshold_source": state.threshold_source, "min_faces": state.min_faces, "added": added,
            "skipped": skipped}


def cluster_photos(embedder: Embedder, inputs: Sequence[str], *, model: str, fingerprint: str,
                   threshold: Optional[float] = None, min_faces: Optional[int] = None,
                   state: Optional[ClusterState] = None, recluster: bool = False,
                   **options: Any) -> tuple[dict[str, Any], ClusterState]:
    """Cluster every face of `inputs`; with `state` (an earlier run's), add them to it (photos already in
    it are not looked at again). Returns (the report, the state to keep)."""
    sources = collect_faces(inputs, embedder.input_size)
    if state is not None:
        seen = set(state.photos)
        sources = [s for s in sources if s.name not in seen]
        if threshold is None:
            value, source = state.threshold, "state"
        else:
            value, source = cluster_threshold(embedder, threshold)
        min_faces = state.min_faces if min_faces is None else min_faces
    else:
        value, source = cluster_threshold(embedder, threshold)
        min_faces = DEFAULT_MIN_FACES if min_faces is None else min_faces
    check_knobs(value, min_faces)
    if sources:
        result, rows = embed_every_face(embedder, sources, **options)
    else:
        result, rows = EmbedResult([], np.zeros((0, embedder.embedding_size), np.float32), np.zeros(0)), []
    if state is None and not rows:
        raise _no_face(sources, result)
    retry = {k["name"] for k in result.skipped}  # unreadable or faceless: looked at again next time
    looked_at = [s.name for s in sources if s.name not in retry]
    new = ClusterState(model, fingerprint, value, source, min_faces, result.embeddings,
                       np.zeros(len(rows), np.int64), rows, looked_at)
    if state is None:
        new.labels = cluster_embeddings(new.embeddings, value, min_faces)
        return report(new, result.skipped, len(rows)), new
    merged = ClusterState(model, fingerprint, value, source, min_faces,
                          np.concatenate([state.embeddings, new.embeddings]), np.zeros(0, np.int64),
                          state.faces + rows, state.photos + looked_at)
    if recluster:
        merged.labels = cluster_embeddings(merged.embeddings, value, min_faces)
    else:
        old_labels, new_labels = assign(state.embeddings, state.labels, new.embeddings, value, min_faces)
        merged.labels = np.concatenate([old_labels, new_labels])
    return report(merged, result.skipped, len(rows)), merged


def evaluate_folders(embedder: Embedder, root: str | Path, *, threshold: Optional[float] = None,
                     min_faces: Optional[int] = None, **options: Any) -> dict[str, Any]:
    """`irface cluster evaluate`: cluster the largest face of every photo of `root/<person>/...` and score
    it against the folders (`irface.cluster.metrics`)."""
    from irface.gallery.photos import identity_folders

    folders, skipped = identity_folders(root, embedder.input_size)
    sources = [s for photos in folders.values() for s in photos]
    person = {s.name: who for who, photos in folders.items() for s in photos}
    # The folder names the person of the photo, not of every face in it: its largest face.
    result, rows = embed_every_face(embedder, sources, all_faces=False, **options)
    if not rows:
        raise _no_face(sources, result)
    value, source = cluster_threshold(embedder, threshold)
    min_faces = DEFAULT_MIN_FACES if min_faces is None else min_faces
    labels = cluster_embeddings(result.embeddings, value, min_faces)
    scores = clustering_scores(labels, [person[r["source"]] for r in rows])
    scores.update(threshold=value, threshold_source=source, min_faces=min_faces, folder=str(root),
                  skipped=skipped + result.skipped)
    return scores
