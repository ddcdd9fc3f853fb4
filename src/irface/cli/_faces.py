"""Options shared by the commands that find faces in photos (detect, align, embed, verify, calibrate)."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from irface.detect.settings import DEFAULT_DETECTOR

# The detector's settings the commands expose, with the detector's own defaults.
DETECTOR_DEFAULTS = {k: getattr(DEFAULT_DETECTOR, k) for k in ("min_score", "min_size", "max_faces", "det_size")}


def add_detector_arguments(p: argparse.ArgumentParser, max_faces: bool = False) -> None:
    g = p.add_argument_group("face detection (needs the detect extra: pip install 'irface[detect]')")
    g.add_argument("--min-score", type=float, default=DETECTOR_DEFAULTS["min_score"],
                   help="lowest face score kept, in [0, 1] (default %(default)g)")
    g.add_argument("--min-size", type=float, default=DETECTOR_DEFAULTS["min_size"],
                   help="smallest face kept: shorter side of its box in photo pixels (default %(default)g; smaller faces "
                        "hold too little to recognise)")
    if max_faces:
        g.add_argument("--max-faces", type=int, default=DETECTOR_DEFAULTS["max_faces"],
                       help="keep at most this many faces per photo, largest first (default %(default)d; 0: all)")
    g.add_argument("--det-size", type=int, default=DETECTOR_DEFAULTS["det_size"],
                   help="the photo's longer side is resized to this many pixels for detection (default %(default)d)")


def add_face_arguments(p: argparse.ArgumentParser, all_faces: bool = True) -> None:
    """--aligned / --detect (how a photo becomes a crop), --all-faces, --strict and the detector's options."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--aligned", dest="face_mode", action="store_const", const="aligned",
                      help="take every image as an aligned crop (no detection; other sizes are resized)")
    mode.add_argument("--detect", dest="face_mode", action="store_const", const="detect",
                      help="detect and align every image, even those of the model's input size")
    p.set_defaults(face_mode="auto")
    if all_faces:
        p.add_argument("--all-faces", action="store_true",
                       help="embed every face of a photo (named photo.jpg#0, #1, ...), not only the largest")
        p.add_argument("--strict", action="store_true",
                       help="stop at the first unreadable photo or photo without a face (default: skip it and go on)")
    add_detector_arguments(p)


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in DETECTOR_DEFAULTS if hasattr(args, k)}


def detector_from_args(args: argparse.Namespace, device: str = "cpu") -> Optional[Any]:
    """A detector with the command line's settings, or None for the defaults (made only if a photo needs it)."""
    options = detector_options(args)
    if all(options[k] == DETECTOR_DEFAULTS[k] for k in options) and device == "cpu":
        return None
    from irface.detect import load_detector

    return load_detector(device=device, **options)
