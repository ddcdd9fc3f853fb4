"""`irface cluster`: who are the people in these photos? Every face grouped by person (and evaluation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from irface.cli._faces import add_face_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args
from irface.cli._output import add_json_argument, emit, skipped_text

EVALUATE = "evaluate"


def register(sub) -> None:
    from irface.cluster.settings import DEFAULT_MIN_FACES, DEFAULT_THRESHOLD

    p = sub.add_parser(
        "cluster", help="Group every face of unlabelled photos by person (or evaluate that on labelled folders)",
        usage="irface cluster PHOTO... --model MODEL [--into STATE [--recluster]] [--output FILE.json] [--json]\n"
              "       irface cluster evaluate PHOTOS_BY_PERSON --model MODEL [--json]",
        description="Detect, align and embed every face of every photo (files or folders), then group the faces by "
                    "person: DBSCAN over a k-nearest-neighbour graph of cosine similarities. Faces that belong to "
                    "no group are noise (cluster -1); people are numbered by size (0 the largest). With --into "
                    "STATE, new photos join the people of an earlier run. 'irface cluster evaluate DIR' clusters "
                    "DIR/<person>/* and scores the result against the folders. See docs/cluster.md.")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos or folders of photos (or: evaluate DIR)")
    add_model_argument(p)
    p.add_argument("--threshold", type=float,
                   help="cosine similarity above which two faces are linked (default: the state's, else the "
                        "model's calibrated threshold, else the one stored in it, else "
                        f"{DEFAULT_THRESHOLD:g})")
    p.add_argument("--min-faces", type=int,
                   help="faces a person needs, counting the face itself, for its neighbourhood to form a person "
                        f"(DBSCAN's min_samples; default {DEFAULT_MIN_FACES}, or the state's)")
    p.add_argument("--into", metavar="STATE",
                   help="keep the result in STATE (.npz); if it exists, new photos join its people")
    p.add_argument("--recluster", action="store_true", help="with --into: cluster every face of STATE again")
    p.add_argument("--output", "-o", metavar="FILE.json", help="also write the result (every face) to this file")
    p.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default 32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    add_model_arguments(p)
    add_face_arguments(p, all_faces=False)
    add_json_argument(p)
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    return {"mode": args.face_mode, "detector": detector_from_args(args), "batch_size": args.batch_size,
            "progress": args.progress}


def run(args: argparse.Namespace) -> int:
    if args.photos[0] == EVALUATE and not Path(EVALUATE).exists():
        return run_evaluate(args)
    from irface.cluster.photos import cluster_photos
    from irface.cluster.state import ClusterState
    from irface.errors import ConfigError
    from irface.gallery import model_fingerprint
    from irface.utils import check_writable

    if args.recluster and not args.into:
        raise ConfigError("--recluster needs --into STATE (the earlier result to cluster again)")
    for target in (args.into, args.output):
        if target:
            check_writable(target)
    state = ClusterState.load(args.into) if args.into and Path(args.into).exists() else None
    embedder = model_from_args(args)
    fingerprint = model_fingerprint(embedder)
    if state is not None:
        state.check_model(fingerprint, args.into)
    report, new_state = cluster_photos(embedder, args.photos, model=args.model, fingerprint=fingerprint,
                                       threshold=args.threshold, min_faces=args.min_faces, state=state,
                                       recluster=args.recluster, **_options(args))
    if args.into:
        new_state.save(args.into)
        report["state"] = args.into
    if args.output:
        emit(report, args.output, None)
    emit(report, args.json, "\n".join(_text(report)) + skipped_text(report))
    return 0


def _text(report: dict) -> list[str]:
    lines = []
    faces = report["faces"]
    by_cluster: dict[int, list[dict]] = {}
    for f in faces:  # grouped once: a scan of every face per person was quadratic in a large library
        by_cluster.setdefault(f["cluster"], []).append(f)
    for c in [*range(max(by_cluster, default=-1) + 1), -1]:  # people, then noise
        members = by_cluster.get(c)
        if not members:
            continue
        lines.append(f"{'noise' if c < 0 else f'person {c}'}: {len(members)} face(s)")
        lines += [f"  {f['source']} #{f['face']}" for f in members]
    photos = len({f["source"] for f in faces})
    added = f" ({report['added']} new)" if report.get("state") else ""
    lines.append(f"{len(faces)} faces{added} in {photos} photos: {report['clusters']} people, {report['noise']} "
                 f"faces of no one (noise); threshold {report['threshold']:g} ({report['threshold_source']}), "
                 f"min {report['min_faces']} faces a person")
    if report.get("state"):
        lines.append(f"kept in {report['state']}")
    return lines


def run_evaluate(args: argparse.Namespace) -> int:
    from irface.cluster.photos import evaluate_folders
    from irface.errors import ConfigError

    if len(args.photos) != 2:
        raise ConfigError("usage: irface cluster evaluate PHOTOS_BY_PERSON --model MODEL (one folder of "
                          "person folders)")
    for option in ("into", "output"):
        if getattr(args, option):
            raise ConfigError(f"--{option} does not apply to 'irface cluster evaluate'")
    if args.recluster:
        raise ConfigError("--recluster does not apply to 'irface cluster evaluate'")
    embedder = model_from_args(args)
    report = evaluate_folders(embedder, args.photos[1], threshold=args.threshold, min_faces=args.min_faces,
                              **_options(args))
    report["model"] = args.model
    pw, b3 = report["pairwise"], report["bcubed"]
    lines = [(f"{report['faces']} faces of {report['people_true']} people: {report['people_found']} people found, "
              f"{100 * report['noise_fraction']:.1f}% noise"),
             f"pairwise  precision {pw['precision']:.4f}  recall {pw['recall']:.4f}  F1 {pw['f1']:.4f}",
             f"BCubed    precision {b3['precision']:.4f}  recall {b3['recall']:.4f}  F1 {b3['f1']:.4f}",
             (f"(threshold {report['threshold']:g} from the {report['threshold_source']}, "
              f"min {report['min_faces']} faces a person)")]
    emit(report, args.json, "\n".join(lines) + skipped_text(report))
    return 0
