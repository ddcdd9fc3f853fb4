"""`irface data`: inspect, pack, unpack, synthesise and pair datasets."""

from __future__ import annotations

import argparse

from irface.cli._output import add_json_argument, emit

HELP = "Inspect, pack, unpack and synthesise datasets"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser("data", help=HELP, description=HELP + ": RecordIO (train.rec/.idx/property), image folders "
                       "(class per subfolder) and verification .bin sets. See docs/data.md.")
    cmds = p.add_subparsers(dest="data_command", metavar="ACTION")

    info = cmds.add_parser("info", help="what a RecordIO folder, image folder or .bin holds",
                           description="Images, classes, images per class (min/median/max), image size and layout "
                           "of a RecordIO folder or an image folder; pairs and positives of a .bin.")
    info.add_argument("path", help="RecordIO folder (or its train.rec), image folder, or .bin file")
    info.add_argument("--scan", action="store_true",
                      help="read every record's label and check it (header layout; the plain layout always does)")
    add_json_argument(info)
    info.set_defaults(func=run_info)

    pack = cmds.add_parser("pack", help="image folder -> train.rec/train.idx/property",
                           description="Pack IMAGE_FOLDER/<class>/<image> into OUT_DIR as RecordIO (insightface's "
                           "header layout by default). Images keep their encoded bytes unless --reencode.")
    pack.add_argument("folder", metavar="IMAGE_FOLDER")
    pack.add_argument("out_dir", metavar="OUT_DIR")
    pack.add_argument("--image-size", type=_positive, default=None,
                      help="side written to property (default: the first image's); with --reencode, the size stored")
    pack.add_argument("--reencode", action="store_true",
                      help="decode, resize (short side, centre crop) and store as JPEG instead of the original bytes")
    pack.add_argument("--quality", type=_positive, default=95, help="JPEG quality with --reencode (default 95)")
    pack.add_argument("--layout", choices=("header", "plain"), default="header",
                      help="header: record 0 + identity records, as MS1MV2 ships (default); plain: records 0..N-1")
    pack.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images instead of stopping")
    pack.set_defaults(func=run_pack)

    unpack = cmds.add_parser("unpack", help="train.rec -> image folder",
                             description="Write every image of REC_DIR to OUT_FOLDER/<class>/<key>.<ext>, bytes "
                             "unchanged; class folders sort in class order.")
    unpack.add_argument("rec_dir", metavar="REC_DIR")
    unpack.add_argument("out_folder", metavar="OUT_FOLDER")
    unpack.set_defaults(func=run_unpack)

    synth = cmds.add_parser("synth", help="synthetic identities: train.rec + lfw/cfp_fp/agedb_30 .bin",
                            description="Render face-like synthetic identities into OUT_DIR: train.rec/train.idx/"
                            "property (identities 0..N-1) and lfw.bin, cfp_fp.bin, agedb_30.bin from M held-out "
                            "identities. Deterministic given --seed.")
    synth.add_argument("out_dir", metavar="OUT_DIR")
    synth.add_argument("--ids", type=_positive, required=True, help="training identities")
    synth.add_argument("--per-id", type=_positive, required=True, help="training images per identity")
    synth.add_argument("--holdout-ids", type=_non_negative, default=100,
                       help="held-out identities for the .bin sets (default 100)")
    synth.add_argument("--pairs", type=_non_negative, default=600, help="pairs in each .bin (default 600; 0: no .bin)")
    synth.add_argument("--seed", type=int, default=0, help="everything follows from it (default 0)")
    synth.add_argument("--image-size", type=_positive, default=112, help="image side (default 112)")
    synth.add_argument("--render-size", type=_positive, default=None,
                       help="side the shapes are drawn at before resizing to --image-size (default half of it; "
                            "the demo draws its 56-px images at 56: sharper, twice the time)")
    synth.add_argument("--difficulty", type=float, default=1.0,
                       help="nuisance strength: 0 none, 1 default, 2 twice as strong")
    synth.add_argument("--layout", choices=("header", "plain"), default="header", help="RecordIO layout (default header)")
    synth.set_defaults(func=run_synth)

    ijb = cmds.add_parser("synth-ijb", help="synthetic IJB-B/IJB-C set (loose photos + meta), for irface eval --ijb",
                          description="Write a small IJB-format set into OUT_DIR/<TARGET>/: loose, unaligned photos "
                          "of synthetic identities in loose_crop/ with their true 5 landmarks and a faceness score, "
                          "templates of several media, 1:1 template pairs and the 1:N gallery/probe files, in the "
                          "insightface archive's formats (docs/eval.md). Deterministic given --seed.")
    ijb.add_argument("out_dir", metavar="OUT_DIR")
    ijb.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC", help="file names of this set (default IJBC)")
    ijb.add_argument("--subjects", type=_positive, default=16, help="identities (default 16)")
    ijb.add_argument("--probe-templates", type=_positive, default=2,
                     help="probe templates per subject, besides its gallery template (default 2)")
    ijb.add_argument("--seed", type=int, default=0, help="everything follows from it (default 0)")
    ijb.add_argument("--difficulty", type=float, default=0.5, help="nuisance strength of the faces (default 0.5)")
    ijb.set_defaults(func=run_synth_ijb)

    pairs = cmds.add_parser("make-pairs", help="image folder -> balanced verification .bin",
                            description="Build a .bin of N balanced pairs (half same identity) from IMAGE_FOLDER "
                            "(held-out identities), in 10 identity-disjoint folds like LFW.")
    pairs.add_argument("folder", metavar="IMAGE_FOLDER")
    pairs.add_argument("out", metavar="OUT.bin")
    pairs.add_argument("--pairs", type=_positive, required=True, help="number of pairs")
    pairs.add_argument("--seed", type=int, default=0, help="pair choice seed (default 0)")
    pairs.add_argument("--folds", type=_positive, default=10, help="identity-disjoint folds (default 10)")
    pairs.set_defaults(func=run_make_pairs)

    reindex = cmds.add_parser("reindex", help="rebuild train.idx from train.rec",
                              description="Rebuild a lost or damaged train.idx by walking train.rec's records "
                              "(keys 0..N-1 in file order, as insightface's files have them).")
    reindex.add_argument("rec_dir", metavar="REC_DIR")
    reindex.set_defaults(func=run_reindex)
    p.set_defaults(help_parser=p)


def run_info(args: argparse.Namespace) -> int:
    from irface.data.info import describe, format_info

    info = describe(args.path, scan=args.scan)
    emit(info, args.json, format_info(info))
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from irface.data.convert import pack_image_folder

    r = pack_image_folder(args.folder, args.out_dir, image_size=args.image_size, reencode=args.reencode,
                          quality=args.quality, layout=args.layout, skip_bad=args.skip_bad)
    h, w = r["image_size"]
    print(f"packed {r['images']} images of {r['classes']} classes into {r['out_dir']} "
          f"({r['layout']} layout, {w}x{h}" + (f", {r['skipped']} skipped" if r["skipped"] else "") + ")")
    return 0


def run_unpack(args: argparse.Namespace) -> int:
    from irface.data.convert import unpack_recordio

    r = unpack_recordio(args.rec_dir, args.out_folder)
    print(f"unpacked {r['images']} images of {r['classes']} classes into {r['out_folder']}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from irface.data.synth import write_synthetic
    from irface.errors import DataError

    if not 0.0 <= args.difficulty <= 3.0:
        raise DataError(f"--difficulty must be between 0 and 3, got {args.difficulty}")
    if args.pairs and args.holdout_ids < 2:
        raise DataError("--pairs needs --holdout-ids of at least 2")
    s = write_synthetic(args.out_dir, ids=args.ids, per_id=args.per_id, holdout_ids=args.holdout_ids,
                        pairs=args.pairs, seed=args.seed, image_size=args.image_size,
                        difficulty=args.difficulty, layout=args.layout, render_size=args.render_size)
    bins = ", ".join(f"{b}.bin" for b in s.bins)
    print(f"wrote {s.train_images} images of {s.train_ids} identities to {s.out_dir}"
          + (f"; {bins} with {s.pairs} pairs each from {s.holdout_ids} held-out identities" if bins else ""))
    return 0


def run_synth_ijb(args: argparse.Namespace) -> int:
    from irface.data.synth_ijb import write_synth_ijb
    from irface.errors import DataError

    if not 0.0 <= args.difficulty <= 3.0:
        raise DataError(f"--difficulty must be between 0 and 3, got {args.difficulty}")
    if args.subjects < 2:
        raise DataError(f"--subjects must be at least 2, got {args.subjects}")
    s = write_synth_ijb(args.out_dir, target=args.target, subjects=args.subjects,
                        probe_templates=args.probe_templates, seed=args.seed, difficulty=args.difficulty)
    print(f"wrote {s.root}: {s.images} photos, {s.templates} templates of {s.subjects} subjects, "
          f"{s.pairs} pairs ({s.genuine} genuine), 1:N galleries and probes")
    return 0


def run_make_pairs(args: argparse.Namespace) -> int:
    from irface.data.convert import make_pairs

    r = make_pairs(args.folder, args.out, args.pairs, seed=args.seed, folds=args.folds)
    print(f"wrote {r['out']}: {r['pairs']} pairs ({r['positives']} positive) from {r['identities']} identities")
    return 0


def run_reindex(args: argparse.Namespace) -> int:
    from irface.data.convert import reindex_recordio

    r = reindex_recordio(args.rec_dir)
    print(f"wrote {r['idx']}: {r['records']} records")
    return 0
