"""`irface align`: align a face to the 112x112 template from 5 landmarks."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "align", help="Align a face to the 112x112 ArcFace template from 5 landmarks",
        description="Cut the aligned face crop the models expect out of a photo: the similarity transform "
                    "(least squares) from 5 landmarks (left eye, right eye, nose tip, left and right mouth "
                    "corners, in pixels) onto the standard 112x112 ArcFace template. See docs/inference.md.")
    p.add_argument("image", metavar="IMAGE", help="the photo")
    p.add_argument("--landmarks", required=True, metavar="x1,y1,...,x5,y5", help="the 5 landmarks from a detector")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="crop to write (.png, .jpg, ...)")
    p.add_argument("--size", type=int, default=112, help="crop side; the template is scaled by size/112 (default 112)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.errors import ConfigError
    from irface.infer.align import align_face, parse_landmarks
    from irface.infer.images import open_rgb, save_image

    if args.size <= 0:
        raise ConfigError(f"--size must be positive, got {args.size}")
    points = parse_landmarks(args.landmarks)
    crop = align_face(open_rgb(args.image), points, args.size)
    save_image(args.output, crop)
    print(f"wrote {args.output} ({args.size}x{args.size})")
    return 0

