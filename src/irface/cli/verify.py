"""`irface verify`: compare the faces of two photos."""

from __future__ import annotations

import argparse

from irface.cli._faces import add_face_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args
from irface.cli._output import add_json_argument, emit
from irface.infer.settings import DEFAULT_THRESHOLD


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="Compare the faces of two photos (cosine similarity, same or different)",
        description="Find and embed the face of each photo and compare them: cosine similarity against a "
                    "threshold (default: the one irface calibrate stored beside the model, else the one stored in "
                    f"it, else {DEFAULT_THRESHOLD:g}, which is uncalibrated). A photo of exactly the model's input size (112x112) "
                    "is taken as an aligned crop; any other is detected and aligned (its largest face), or "
                    "aligned from 5 landmarks given with --landmarks-a/-b. See docs/inference.md.")
    add_model_argument(p, positional=True)
    p.add_argument("image_a", metavar="A", help="first photo or face crop")
    p.add_argument("image_b", metavar="B", help="second photo or face crop")
    p.add_argument("--threshold", type=float, help="cosine similarity above which the faces are the same person")
    p.add_argument("--landmarks-a", metavar="x1,y1,...,x5,y5", help="align A from these 5 landmarks (no detection)")
    p.add_argument("--landmarks-b", metavar="x1,y1,...,x5,y5", help="align B from these 5 landmarks (no detection)")
    add_model_arguments(p)
    add_face_arguments(p, all_faces=False)
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.infer import verify_pair

    embedder = model_from_args(args)
    result = verify_pair(embedder, args.image_a, args.image_b, args.threshold, args.landmarks_a, args.landmarks_b,
                         mode=args.face_mode, detector=detector_from_args(args))
    verdict = "same person" if result["same"] else "different people"
    source = result["threshold_source"]
    if source == "default":
        note = (f"threshold {result['threshold']:g}: the default, uncalibrated for this model; "
                f"run irface calibrate {args.model} PAIRS")
    else:
        note = f"threshold {result['threshold']:g}, from the {source}"
    emit(result, args.json, f"similarity {result['similarity']:.4f}: {verdict} ({note})")
    return 0
