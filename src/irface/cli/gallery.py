"""`irface gallery`: build, change, inspect, search and evaluate a face gallery (1:N)."""

from __future__ import annotations

import argparse

from irface.cli._faces import add_face_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args, model_options
from irface.cli._output import add_json_argument, emit, skipped_text
from irface.cli._ray import add_ray_arguments, ray_options, refuse_without_ray
from irface.errors import ConfigError
from irface.infer.settings import DEFAULT_THRESHOLD

GALLERY_HELP = "a gallery file, or a PostgreSQL database: postgresql://USER@HOST/DB (docs/gallery.md)"
INDEX_HELP = ("flat: exact inner product (default); ivf or hnsw: approximate, for galleries of a million faces "
              "and more (benchmarks/README.md has recall and speed)")


def _model_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    add_model_argument(p, required=required, default=None if required else
                       "the one the gallery was built with, if its file is still there")
    p.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default 32)")
    add_model_arguments(p)
    add_face_arguments(p, all_faces=False)


def register(sub) -> None:
    p = sub.add_parser("gallery", help="1:N face search: build a gallery of known people, search photos in it",
                       description="A gallery holds the faces of known people (a faiss index and a metadata table "
                                   "in one checked file, or in a PostgreSQL database that many processes share) and "
                                   "answers 'who is this?' for new photos. See docs/gallery.md.")
    gsub = p.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)

    b = gsub.add_parser("build", help="a new gallery from GALLERY_DIR/<identity>/*.jpg",
                        description="Detect, align and embed the largest face of every photo under "
                                    "GALLERY_DIR/<identity>/ and write the gallery file OUTPUT (atomically); with "
                                    "--ray, do that on Ray Data through a resumable folder of shards; or, "
                                    "with --from-embeddings, enrol what irface embed --ray wrote without "
                                    "embedding again.")
    b.add_argument("folder", metavar="GALLERY_DIR", nargs="?",
                   help="one folder of photos per identity (the folder name)")
    b.add_argument("--from-embeddings", metavar="DIR", nargs="+",
                   help="the --output folder(s) of irface embed GALLERY_DIR --ray (one per part of an archive): the "
                        "largest face per photo, under the photo's identity folder, for the model recorded there "
                        "(no --model)")
    b.add_argument("--output", "-o", required=True, metavar="G",
                   help="the gallery file to write (e.g. faces.gallery), or an empty PostgreSQL database "
                        "(postgresql://USER@HOST/DB)")
    b.add_argument("--templates", action="store_true", help="also keep one mean template per identity, and search those")
    b.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat", help=INDEX_HELP)
    k = b.add_argument_group("approximate index parameters (defaults in docs/gallery.md)")
    k.add_argument("--nlist", type=int, help="ivf: number of lists (default sqrt(faces))")
    k.add_argument("--nprobe", type=int, help="ivf: lists searched per query")
    k.add_argument("--m", type=int, help="hnsw: links per node")
    k.add_argument("--ef-construction", type=int, help="hnsw: candidates while building")
    k.add_argument("--ef-search", type=int, help="hnsw: candidates while searching")
    _model_arguments(b, required=False)
    r = add_ray_arguments(b, "detect and align in Ray tasks and embed in a pool of model actors (one per GPU) into "
                             "the --shards folder, then enrol the faces from there (as --from-embeddings does); a "
                             "rerun resumes the shards")
    r.add_argument("--shards", metavar="DIR",
                   help="with --ray (needed): the folder of Parquet shards and manifest the photos are embedded into "
                        "(new, empty, or the same build's folder to resume); kept, for --from-embeddings")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="with --ray: no progress bar of photos on stderr")
    add_json_argument(b)
    b.set_defaults(func=run_build)

    a = gsub.add_parser("add", help="add photos of one identity (or a person of irface cluster) to a gallery")
    a.add_argument("gallery", metavar="G", help=GALLERY_HELP)
    a.add_argument("identity", metavar="IDENTITY", help="the person's name (letters, digits, spaces, . _ - ' ( ) ,)")
    a.add_argument("photos", nargs="*", metavar="PHOTO", help="photos or folders of photos")
    a.add_argument("--from-cluster", metavar="STATE:C", help="instead of photos: the faces of person C of an "
                                                             "'irface cluster --into STATE' (docs/cluster.md)")
    _model_arguments(a, required=False)
    add_json_argument(a)
    a.set_defaults(func=run_add)

    r = gsub.add_parser("remove", help="remove every face of identities from a gallery")
    r.add_argument("gallery", metavar="G", help=GALLERY_HELP)
    r.add_argument("identities", nargs="+", metavar="IDENTITY")
    add_json_argument(r)
    r.set_defaults(func=run_remove)

    i = gsub.add_parser("info", help="what a gallery holds (checks the whole file)")
    i.add_argument("gallery", metavar="G", help=GALLERY_HELP)
    add_json_argument(i)
    i.set_defaults(func=run_info)

    s = gsub.add_parser("search", help="who is in these photos? ranked identities with similarities",
                        description="Search the largest face of each photo. A photo whose best match is not above "
                                    "the threshold is 'unknown' (open-set); the threshold is --threshold, else the "
                                    f"one calibrated or stored with the model, else {DEFAULT_THRESHOLD:g}.")
    s.add_argument("gallery", metavar="G", help=GALLERY_HELP)
    s.add_argument("photos", nargs="+", metavar="PHOTO")
    s.add_argument("--top-k", type=int, default=5, help="identities listed per photo (default 5)")
    s.add_argument("--threshold", type=float, help="cosine similarity above which a match is accepted")
    _model_arguments(s, required=False)
    add_json_argument(s)
    s.set_defaults(func=run_search)

    e = gsub.add_parser("evaluate", help="rank-1/5 and open-set TPIR at FPIR 1e-2, 1e-1 on PROBES_DIR/<identity>/*",
                        description="Search every photo of PROBES_DIR/<identity>/: identities enrolled in the gallery "
                                    "are mated searches, the others non-mated. Figures as NIST defines them "
                                    "(docs/gallery.md).")
    e.add_argument("gallery", metavar="G", help=GALLERY_HELP)
    e.add_argument("probes", metavar="PROBES_DIR")
    _model_arguments(e, required=False)
    add_json_argument(e)
    e.set_defaults(func=run_evaluate)

    c = gsub.add_parser("copy", help="copy a gallery between a file and PostgreSQL (either way), exactly",
                        description="Copy every face (same ids, rows, embeddings bit for bit, pictures, templates, "
                                    "index settings) from SRC to DST: a file or a postgresql:// URL each. DST must not "
                                    "exist yet (a file) or hold no tables (a database).")
    c.add_argument("source", metavar="SRC", help=GALLERY_HELP)
    c.add_argument("destination", metavar="DST", help=GALLERY_HELP)
    add_json_argument(c)
    c.set_defaults(func=run_copy)


def _options(args: argparse.Namespace) -> dict:
    return {"mode": args.face_mode, "detector": detector_from_args(args), "batch_size": args.batch_size}


def _open(args: argparse.Namespace):
    """(gallery, embedder): the gallery checked whole, the model checked against its fingerprint."""
    from irface.errors import GalleryError
    from irface.gallery import model_fingerprint, open_gallery

    gallery = open_gallery(args.gallery)
    if args.model is None:
        if not gallery.model:
            raise GalleryError(f"{gallery.location}: the gallery records no model file; give --model")
        args.model = gallery.model
    embedder = model_from_args(args)
    gallery.check_model(model_fingerprint(embedder))
    return gallery, embedder


def run_build(args: argparse.Namespace) -> int:
    from irface.gallery import describe, is_url
    from irface.gallery.index import index_params
    from irface.gallery.photos import build_from_folders
    from irface.utils import check_writable

    if not is_url(args.output):
        check_writable(args.output)
    params = {k: getattr(args, k) for k in ("nlist", "nprobe", "m", "ef_construction", "ef_search")
              if getattr(args, k) is not None}
    index_params(args.index, params)  # refuse a wrong parameter before any work
    if args.from_embeddings is not None:
        if args.ray is not None:
            raise ConfigError("--ray embeds GALLERY_DIR; --from-embeddings enrols embeddings made already: "
                              "give one of them")
        refuse_without_ray(args, also=("shards",))
        return _build_from_embeddings(args, params)
    if args.folder is None or args.model is None:
        raise ConfigError("gallery build needs GALLERY_DIR and --model (or --from-embeddings DIR)")
    if args.ray is not None:
        return _build_on_ray(args, params)
    refuse_without_ray(args, also=("shards",))
    embedder = model_from_args(args)
    summary = build_from_folders(args.folder, embedder, args.output, templates=args.templates, index=args.index,
                                 params=params, model=args.model, **_options(args))
    emit(summary, args.json, f"wrote {describe(args.output)}: {summary['faces']} faces of {summary['identities']} identities "
                             f"({args.index} index{', templates' if args.templates else ''})" + skipped_text(summary))
    return 0


def _build_on_ray(args: argparse.Namespace, params: dict) -> int:
    from irface.gallery import describe
    from irface.gallery.photos import build_on_ray

    if args.shards is None:
        raise ConfigError("gallery build --ray needs --shards DIR: the folder the photos are embedded into, "
                          "which a rerun resumes")
    summary = build_on_ray(args.folder, model_options(args), args.output, args.shards, templates=args.templates,
                           index=args.index, params=params, **ray_options(args))
    shards = summary["shards"]
    emit(summary, args.json, f"wrote {describe(args.output)}: {summary['faces']} faces of {summary['identities']} "
                             f"identities ({args.index} index{', templates' if args.templates else ''}) from "
                             f"{shards['total']} shards in {args.shards} ({shards['written']} now, "
                             f"{shards['done_before']} done before)" + skipped_text(summary))
    return 0


def _build_from_embeddings(args: argparse.Namespace, params: dict) -> int:
    from irface.gallery.photos import build_from_embeddings

    if args.folder is not None or args.model is not None:
        raise ConfigError("--from-embeddings takes the photos and the model its folders record: "
                          "leave out GALLERY_DIR and --model")
    summary = build_from_embeddings(args.from_embeddings, args.output, templates=args.templates, index=args.index,
                                    params=params)
    emit(summary, args.json, f"wrote {args.output}: {summary['faces']} faces of {summary['identities']} identities "
                             f"({args.index} index{', templates' if args.templates else ''}) from the embeddings in "
                             f"{', '.join(args.from_embeddings)}" + skipped_text(summary))
    return 0


def run_add(args: argparse.Namespace) -> int:
    from irface.gallery import validate_identity
    from irface.gallery.photos import enroll_photos

    validate_identity(args.identity)  # before the model is loaded
    if bool(args.photos) == bool(args.from_cluster):
        from irface.errors import ConfigError

        raise ConfigError("give the person's photos or --from-cluster STATE:C (one of them)")
    if args.from_cluster:
        from irface.cluster.state import enroll_cluster
        from irface.gallery import open_gallery

        gallery = open_gallery(args.gallery)
    else:
        gallery, embedder = _open(args)
    with gallery:
        if args.from_cluster:
            summary = enroll_cluster(gallery, args.identity, args.from_cluster)  # embedded already, by the same model
        else:
            summary = enroll_photos(gallery, embedder, args.identity, args.photos, **_options(args))
        gallery.save()
        summary.update(gallery=gallery.location, identity=args.identity, total_faces=len(gallery))
    emit(summary, args.json, f"added {summary['faces']} faces of '{args.identity}' to {gallery.location} "
                             f"({summary['total_faces']} faces in all)" + skipped_text(summary))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from irface.gallery import open_gallery, validate_identity

    for name in args.identities:
        validate_identity(name)
    with open_gallery(args.gallery) as gallery:
        removed = {name: gallery.remove(name) for name in args.identities}
        if any(removed.values()):
            gallery.save()
        total = len(gallery)
    missing = [n for n, c in removed.items() if not c]
    text = f"removed {sum(removed.values())} faces of {len(removed) - len(missing)} identities from {gallery.location}"
    if missing:
        text += f"; not in the gallery: {', '.join(missing)}"
    emit({"gallery": gallery.location, "removed": removed, "total_faces": total}, args.json, text)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from collections import Counter

    from irface.gallery import open_gallery

    with open_gallery(args.gallery) as gallery:
        info = gallery.info()
        counts = Counter(f["identity"] for f in gallery.faces())
    info["identity_faces"] = dict(sorted(counts.items()))
    lines = [f"{gallery.location}: {info['faces']} faces of {info['identities']} identities, {info['embedding_size']}-d, "
             f"{info['index']} index{' + templates' if info['templates'] else ''}",
             f"model: {info['model']} ({info['fingerprint'][:19]})"]
    lines += [f"  {name}: {n}" for name, n in info["identity_faces"].items()]
    emit(info, args.json, "\n".join(lines))
    return 0


def run_search(args: argparse.Namespace) -> int:
    from irface.gallery.photos import search_photos
    from irface.infer.verify import choose_threshold

    gallery, embedder = _open(args)
    threshold, source = choose_threshold(embedder, args.threshold)
    with gallery:
        report = search_photos(gallery, embedder, args.photos, top_k=args.top_k, threshold=threshold,
                               **_options(args))
    report.update(threshold=threshold, threshold_source=source, gallery=gallery.location)
    lines = []
    for row in report["results"]:
        best = row["matches"][0] if row["matches"] else None
        head = f"{row['photo']}: {row['identity']}"
        if best and row["identity"] == "unknown":
            head += f" (closest {best['identity']} {best['similarity']:.4f}, threshold {threshold:g})"
        lines.append(head)
        lines += [f"  {m['identity']:<24} {m['similarity']:.4f}  {m['source']}" for m in row["matches"]]
    emit(report, args.json, "\n".join(lines) + f"\n(threshold {threshold:g}, from the {source})" + skipped_text(report))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from irface.gallery.photos import evaluate_photos

    gallery, embedder = _open(args)
    with gallery:
        report = evaluate_photos(gallery, embedder, args.probes, **_options(args))

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = [f"{report['probes']} probes ({report['mated']} mated, {report['nonmated']} non-mated) against "
             f"{report['gallery_identities']} identities",
             f"rank-1 {pct(report['rank_1'])}  rank-5 {pct(report['rank_5'])}  rank-10 {pct(report['rank_10'])}"]
    for key, t in report["tpir_at_fpir"].items():
        lines.append(f"TPIR@FPIR={key}: " + (
            f"n/a (needs at least {round(1 / float(key))} non-mated probes)" if t["threshold"] is None else
            f"{pct(t['tpir'])} (threshold {t['threshold']:.4f})"))
    emit(report, args.json, "\n".join(lines) + skipped_text(report))
    return 0


def run_copy(args: argparse.Namespace) -> int:
    from irface.gallery import copy_gallery

    summary = copy_gallery(args.source, args.destination)
    emit(summary, args.json, f"copied {summary['faces']} faces of {summary['identities']} identities from "
                             f"{summary['source']} to {summary['destination']}")
    return 0
