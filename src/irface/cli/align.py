"""`irface align`: cut aligned face crops (112x112 by default) out of a photo (detected, or from 5 given landmarks)."""

from __future__ import annotations

import argparse

from irface.cli._faces import add_detector_arguments, detector_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "align", help="Cut aligned 112x112 face crops out of a photo (detected, or from 5 landmarks)",
        description="Cut the aligned face crops the models expect out of a photo: the similarity transform "
                    "(least squares) from 5 landmarks (left eye, right eye, nose tip, left and right mouth "
                    "corners, in pixels) onto the standard 112x112 ArcFace template. Without --landmarks the "
                    "faces are detected: every face is written to the --output folder (or only the largest with "
                    "--largest). See docs/inference.md.")
    p.add_argument("image", metavar="IMAGE", help="the photo")
    p.add_argument("--landmarks", metavar="x1,y1,...,x5,y5",
                   help="the 5 landmarks of one face (no detection); --output is then the crop file")
    p.add_argument("--output", "-o", required=True, metavar="PATH",
                   help="with --landmarks: the crop file (.png, .jpg, ...); else the folder for the crops")
    p.add_argument("--largest", action="store_true", help="write only the largest face")
    p.add_argument("--size", default="112", metavar="S|HxW",
                   help="crop side, or height x width (112x96 for SphereFace/CosFace); each size's convention "
                        "places the points (docs/inference.md; default 112)")
    add_detector_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.errors import ConfigError
    from irface.data.align import align_face, parse_landmarks
    from irface.infer.images import open_rgb, save_image
    from irface.infer.photo import align_photo

    try:
        sides = [int(v) for v in str(args.size).lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) <= 0:
        raise ConfigError(f"--size must be a positive side or HxW (e.g. 112x96), got {args.size!r}")
    size = sides[0] if len(sides) == 1 else (sides[0], sides[1])
    if args.landmarks is not None:
        points = parse_landmarks(args.landmarks)
        crop = align_face(open_rgb(args.image), points, size)
        save_image(args.output, crop)
        print(f"wrote {args.output} ({crop.shape[0]}x{crop.shape[1]}, height x width)")
        return 0
    written = align_photo(args.image, args.output, largest=args.largest, size=size,
                          detector=detector_from_args(args))
    for path, face in written:
        assert face.box is not None  # a detected face
        print(f"wrote {path} (score {face.score:.3f}, box [{', '.join(f'{v:.0f}' for v in face.box)}])")
    return 0
