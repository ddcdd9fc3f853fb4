"""`irface calibrate`: pick a model's verify threshold on labelled pairs and keep it beside the model."""

from __future__ import annotations

import argparse

from irface.cli._faces import add_face_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args
from irface.cli._output import add_json_argument, emit, skipped_text


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="Pick a model's verify threshold on labelled pairs; stored beside the model",
        description="Score labelled pairs with the model and pick the cosine-similarity threshold with the best "
                    "accuracy (or the lowest whose false accept rate is at most --far). PAIRS is a verification "
                    ".bin or a folder of identity folders (people/alice/*.jpg; photos are detected and aligned, "
                    "every two faces make a pair). The threshold, with the model's input settings given here, "
                    "goes to MODEL.irface.json beside the model, which verify and embed read, with the clustering "
                    "threshold irface cluster reads (a normal curve fitted to the different pairs, at a far lower "
                    "false accept rate: docs/cluster.md). "
                    "See docs/inference.md.")
    add_model_argument(p, positional=True)
    p.add_argument("pairs", metavar="PAIRS", help="a verification .bin, or a folder of identity folders")
    p.add_argument("--far", type=float, help="target false accept rate (e.g. 0.001); default: best accuracy")
    p.add_argument("--dry-run", action="store_true", help="report the threshold without storing it")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_model_arguments(p)
    add_face_arguments(p, all_faces=False)
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.infer.calibrate import calibrate

    embedder = model_from_args(args)
    report = calibrate(embedder, args.model, args.pairs, args.far, args.batch_size, write=not args.dry_run,
                       mode=args.face_mode, detector=detector_from_args(args))
    where = f"stored in {report['file']}" if "file" in report else "not stored (--dry-run)"
    text = (f"threshold {report['threshold']:.4f} ({report['rule']}) on {report['same_pairs']} same and "
            f"{report['different_pairs']} different pairs: accuracy {report['accuracy']:.4f}, "
            f"FAR {report['far']:.4f}, TAR {report['tar']:.4f}; clustering threshold "
            f"{report['cluster_threshold']:.4f} ({report['cluster_rule']}); {where}")
    emit(report, args.json, text + skipped_text(report))
    return 0
