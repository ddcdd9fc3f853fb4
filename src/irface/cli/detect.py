"""`irface detect`: every face in photos, with its box, score and 5 landmarks."""

from __future__ import annotations

import argparse

from irface.cli._faces import add_detector_arguments, detector_options
from irface.cli._output import add_json_argument, emit


def register(sub) -> None:
    p = sub.add_parser(
        "detect", help="Find faces in photos: box, score and 5 landmarks (ArcFace order)",
        description="Detect every face in each photo (files or folders) with RetinaFace: its box [x1, y1, x2, y2], "
                    "score and 5 landmarks (left eye, right eye, nose tip, left and right mouth corner, as the "
                    "viewer sees them), in pixels of the upright photo. An unreadable photo is reported and skipped. "
                    "See docs/inference.md.")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files or folders of images")
    add_detector_arguments(p, max_faces=True)
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.detect import load_detector
    from irface.errors import DataError
    from irface.infer.photo import detect_files

    detector = load_detector(**detector_options(args))
    report = detect_files(args.photos, detector)
    if not report["photos"]:
        raise DataError(report["skipped"][0]["reason"] if len(report["skipped"]) == 1 else
                        f"no photo could be read: all {len(report['skipped'])} skipped "
                        f"(first: {report['skipped'][0]['reason']})")
    lines = []
    for photo in report["photos"]:
        lines.append(f"{photo['path']} ({photo['width']}x{photo['height']}): {len(photo['faces'])} face(s)")
        for k, f in enumerate(photo["faces"]):
            box = ", ".join(f"{v:.1f}" for v in f["box"])
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in f["landmarks"])
            lines.append(f"  #{k} score {f['score']:.3f} box [{box}] landmarks {points}")
    for s in report["skipped"]:
        lines.append(f"skipped {s['reason']}")
    single = len(report["photos"]) == 1 and not report["skipped"]
    emit(report["photos"][0] if single else report, args.json, "\n".join(lines))
    return 0
