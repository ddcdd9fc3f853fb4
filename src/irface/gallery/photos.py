"""From photos to the gallery: enrol identity folders, search photos, evaluate on a labelled probe set.

Photos go through the photo pipeline (`irface.infer.embed.embed_sources`: detect, align, embed;
112x112 crops used as they are). A folder of identities is `ROOT/<identity>/*.jpg` (any depth below
the identity); a photo that cannot be read or holds no face is reported and skipped, the rest kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irface.errors import DataError, GalleryError
from irface.eval.identification import FPIRS, RANKS, rank_k, tpir_at_fpir
from irface.eval.rates import threshold_at_rate
from irface.infer.fingerprint import model_fingerprint
from irface.gallery.gallery import Gallery, decision, validate_identity
from irface.gallery.opener import create_gallery
from irface.infer.embed import EmbedResult, embed_sources
from irface.infer.images import FaceSource, collect_faces
from irface.infer.model_file import Embedder

log = logging.getLogger(__name__)


def not_in_identity_folder(path: str | Path) -> str:
    return f"{path}: not inside an identity folder"


def identity_of(photo: str, roots: Sequence[str]) -> str:
    """The identity of a photo listed from one of the folders `roots`, as `identity_folders` reads
    `ROOT/<identity>/...`: the first folder below the root. GalleryError when the photo is not inside one
    or the name is not a valid identity."""
    path = Path(photo)
    for root in roots:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        if len(parts) >= 2:
            try:
                return validate_identity(parts[0])
            except GalleryError as e:
                raise GalleryError(f"{Path(root) / parts[0]}: {e}") from None
    raise GalleryError(not_in_identity_folder(photo))


def identity_folders(root: str | Path, size: int | tuple[int, int] = 112
                     ) -> tuple[dict[str, list[FaceSource]], list[dict[str, str]]]:
    """`{identity: [its photos]}` of `root/<identity>/...` (faces of a model with `size` x `size` input),
    and what was skipped (bad names, empty folders, files beside the folders). Hidden folders and files are
    passed over, as `irface embed` lists photos."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one folder of photos per identity)")
    found: dict[str, list[FaceSource]] = {}
    skipped: list[dict[str, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):  # hidden, as the photo listing (`list_image_files`) has it: no identity
            continue
        if not entry.is_dir():
            skipped.append({"name": str(entry), "reason": not_in_identity_folder(entry)})
            continue
        try:
            validate_identity(entry.name)
            found[entry.name] = collect_faces([entry], size)
        except (GalleryError, DataError) as e:
            skipped.append({"name": str(entry), "reason": f"{entry}: {e}" if isinstance(e, GalleryError) else str(e)})
    for s in skipped:
        log.warning("skipped %s", s["reason"])
    if not found:
        raise DataError(f"{root}: no identity folder with photos in it")
    return found, skipped


def embed_photos(embedder: Embedder, sources: Sequence[FaceSource], *, mode: str = "auto", detector: Any = None,
                 batch_size: int = 32, progress: bool = False) -> EmbedResult:
    """The largest face of each photo, embedded and L2-normalised; unreadable or faceless photos skipped."""
    return embed_sources(embedder, sources, batch_size, progress, mode=mode, detector=detector)


def _boxes(boxes: Sequence[Optional[Sequence[float]]]) -> Optional[np.ndarray]:
    # Aligned crops have no box; NaN stands for one in a batch that mixes both.
    if all(b is None for b in boxes):
        return None
    return np.array([b if b is not None else [np.nan] * 4 for b in boxes], np.float64)


def _flatten(folders: dict[str, list[FaceSource]]) -> tuple[list[FaceSource], dict[str, str]]:
    """Every identity's photos in one list, and each photo's identity by name."""
    photos = [s for sources in folders.values() for s in sources]
    return photos, {s.name: who for who, sources in folders.items() for s in sources}


def enroll_folders(gallery: Gallery, embedder: Embedder, folders: dict[str, list[FaceSource]],
                   **options: Any) -> dict[str, Any]:
    """Embed every identity's photos and add them in one batch; returns counts and what was skipped."""
    all_photos, identity_of = _flatten(folders)
    result = embed_photos(embedder, all_photos, **options)
    if not result.names:
        raise DataError(f"no face found in any of the {len(all_photos)} photos")
    identities = [identity_of[name] for name in result.names]
    gallery.train(result.embeddings)  # IVF learns its lists from everything enrolled (a no-op otherwise)
    gallery.add_many(identities, result.embeddings, result.names, _boxes([f.get("box") for f in result.faces]))
    return {"faces": len(result.names), "identities": len(set(identities)), "skipped": result.skipped}


def enroll_photos(gallery: Gallery, embedder: Embedder, identity: str, photos: Sequence[str],
                  **options: Any) -> dict[str, Any]:
    """Add the largest face of each photo (files or folders) to `identity`."""
    validate_identity(identity)
    return enroll_folders(gallery, embedder, {identity: collect_faces(photos, embedder.input_size)}, **options)


def build_from_folders(root: str | Path, embedder: Embedder, output: str | Path, *, templates: bool = False,
                       index: str = "flat", params: Optional[dict[str, Any]] = None,
                       model: Optional[str] = None, **options: Any) -> dict[str, Any]:
    """`irface gallery build`: a new gallery at `output` (a file or a postgresql:// URL) from `root/<identity>/*` photos."""
    folders, skipped = identity_folders(root, embedder.input_size)
    gallery = create_gallery(output, fingerprint=model_fingerprint(embedder), embedding_size=embedder.embedding_size,
                             index=index, templates=templates, model=model or embedder.info.get("path"), params=params)
    with gallery:
        summary = enroll_folders(gallery, embedder, folders, **options)
        gallery.save()
    summary["skipped"] = skipped + summary["skipped"]
    return {**summary, "gallery": gallery.location, "index": index, "templates": templates}


def enroll_embeddings(gallery: Gallery, folders: Sequence[str | Path]) -> dict[str, Any]:
    """Add the faces of finished `irface embed --ray` folders to `gallery` without embedding again: the
    largest face of each photo (face 0), under the identity of its folder (`identity_of` its run's inputs);
    a photo found in an earlier folder is skipped. The gallery's model must be the one of every folder."""
    from irface.infer.shards import read_shards

    rows: list[np.ndarray] = []
    identities: list[str] = []
    sources: list[str] = []
    boxes: list[Optional[list[float]]] = []
    skipped: list[dict[str, str]] = []
    first: dict[str, str] = {}
    for folder in folders:
        data = read_shards(folder)
        gallery.check_model(data.manifest.data["fingerprint"])
        roots = data.manifest.data["inputs"]
        skipped += data.skipped
        keep = []
        for i, (source, k) in enumerate(zip(data.sources, data.face_index)):
            if k != 0:  # --all-faces rows past the largest: `gallery build` enrols one face per photo
                continue
            try:
                if source in first:
                    raise GalleryError(f"{source}: enrolled already from {first[source]}")
                identity = identity_of(source, roots)
            except GalleryError as e:
                log.warning("skipped %s", e)
                skipped.append({"name": source, "reason": str(e)})
                continue
            first[source] = str(folder)
            keep.append(i)
            identities.append(identity)
            sources.append(source)
            boxes.append(data.boxes[i])
        rows.append(data.embeddings[keep])
    if not sources:
        raise DataError(f"{', '.join(map(str, folders))}: no face inside an identity folder (ROOT/<identity>/photo) "
                        "to enrol")
    embeddings = np.concatenate(rows)
    gallery.train(embeddings)
    gallery.add_many(identities, embeddings, sources, _boxes(boxes))
    return {"faces": len(sources), "identities": len(set(identities)), "skipped": skipped}


def build_from_embeddings(folders: Sequence[str | Path], output: str | Path, *, templates: bool = False,
                          index: str = "flat", params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """`irface gallery build --from-embeddings`: a new gallery at `output` (a file or an empty PostgreSQL
    database) from `irface embed --ray` folders (one run, or one per part of an archive), for the model
    recorded there."""
    from irface.infer.shards import Manifest

    manifest = Manifest.read(folders[0])
    gallery = create_gallery(output, fingerprint=manifest.data["fingerprint"],
                             embedding_size=int(manifest.data["embedding_size"]), index=index, templates=templates,
                             model=manifest.data["model"], params=params)
    with gallery:
        summary = enroll_embeddings(gallery, folders)
        gallery.save()
    return {**summary, "gallery": gallery.location, "index": index, "templates": templates,
            "embeddings": [str(f) for f in folders]}


def build_on_ray(root: str | Path, model: dict[str, Any], output: str | Path, shards: str | Path, *,
                 templates: bool = False, index: str = "flat", params: Optional[dict[str, Any]] = None,
                 **ray: Any) -> dict[str, Any]:
    """`irface gallery build GALLERY_DIR --ray`: the gallery `build_from_folders` makes, the photos embedded on
    Ray into the shards folder `shards` and enrolled from there, as `--from-embeddings` enrols them.

    `model`: `load_model`'s arguments (the actors open their own); `ray`: `embed_to_shards`' options (address,
    num_cpus, shard_size, actors, batch_size, mode, detector, progress, verbose). The photos embedded are those
    of `identity_folders(root)`, so the faces and the skips (bad folder names, empty folders, files beside the
    folders; then unreadable or faceless photos) are the one-process build's. A rerun resumes the shards; the
    gallery is made before any photo is embedded, so a refused `output` costs no work.
    """
    from irface.infer import load_model
    from irface.infer.ray_embed import embed_to_shards

    embedder = load_model(**{**model, "device": "cpu"})  # as embed_to_shards opens it: fingerprint and sizes
    folders, skipped = identity_folders(root, embedder.input_size)
    gallery = create_gallery(output, fingerprint=model_fingerprint(embedder), embedding_size=embedder.embedding_size,
                             index=index, templates=templates, model=str(model["path"]), params=params)
    with gallery:
        embedded = embed_to_shards(model, [root], shards, listing=_flatten(folders)[0], embedder=embedder, **ray)
        summary = enroll_embeddings(gallery, [shards])
        gallery.save()
    summary["skipped"] = skipped + summary["skipped"]
    return {**summary, "gallery": gallery.location, "index": index, "templates": templates,
            "embeddings": [str(shards)], "shards": embedded["shards"]}


def search_photos(gallery: Gallery, embedder: Embedder, photos: Sequence[str], *, top_k: int = 5,
                  threshold: Optional[float] = None, **options: Any) -> dict[str, Any]:
    """Search each photo's largest face: `{"results": [{"photo", "identity", "matches"}], "skipped"}`."""
    result = embed_photos(embedder, collect_faces(photos, embedder.input_size), **options)
    found = gallery.search(result.embeddings, top_k=top_k, threshold=threshold) if result.names else []
    rows = [{"photo": name, "identity": decision(matches),
             "matches": [{"identity": m.identity, "similarity": m.similarity, "source": m.source,
                          "accepted": m.accepted} for m in matches]}
            for name, matches in zip(result.names, found)]
    return {"results": rows, "skipped": result.skipped}


def identification_figures(mate_rank: Sequence[int], mate_score: Sequence[float],
                           nonmated_top: Sequence[float]) -> dict[str, Any]:
    """rank-1/5/10 and TPIR at FPIR 1e-2, 1e-1 (with the threshold each needs) from per-probe search results.

    `mate_rank`: 0 for a non-mated probe; past the search's list, len(list) + 1 (a miss at every k shown).
    """
    ranks = np.asarray(mate_rank, np.int64)
    scores = np.asarray(mate_score, np.float64)
    out: dict[str, Any] = {"mated": int((ranks >= 1).sum()), "nonmated": len(nonmated_top)}
    out.update({f"rank_{k}": v for k, v in rank_k(ranks, RANKS).items()})
    nonmated = np.asarray(nonmated_top, np.float64)
    tpir = tpir_at_fpir(scores, ranks, nonmated, FPIRS)
    out["tpir_at_fpir"] = {f"{f:.0e}": {"tpir": tpir[f], "threshold": threshold_at_rate(nonmated, f)}
                           for f in FPIRS}
    return out


def evaluate_photos(gallery: Gallery, embedder: Embedder, probes_root: str | Path, **options: Any) -> dict[str, Any]:
    """Identification figures of `probes_root/<identity>/*` against the gallery (`irface.eval.identification`).

    A probe whose identity is enrolled is a mated search; any other is non-mated.
    """
    folders, skipped = identity_folders(probes_root, embedder.input_size)
    photos, identity_of = _flatten(folders)
    result = embed_photos(embedder, photos, **options)
    enrolled = set(gallery.identities())
    depth = max(RANKS)
    matches = gallery.search(result.embeddings, top_k=depth) if result.names else []
    ranks, scores, nonmated = [], [], []
    for name, row in zip(result.names, matches):
        who = identity_of[name]
        if who in enrolled:
            rank = next((r for r, m in enumerate(row, 1) if m.identity == who), depth + 1)
            ranks.append(rank)
            scores.append(row[rank - 1].similarity if rank <= len(row) else -np.inf)
        else:
            ranks.append(0)
            scores.append(np.nan)
            nonmated.append(row[0].similarity if row else -np.inf)
    report = identification_figures(ranks, scores, nonmated)
    report.update({"probes": len(result.names), "skipped": skipped + result.skipped,
                   "gallery": gallery.location, "gallery_identities": len(enrolled)})
    return report
