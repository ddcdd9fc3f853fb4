"""`irface eval`: the seed's verification protocol on `.bin` sets (LFW, CFP-FP, AgeDB-30, ...), and
IJB-B / IJB-C (1:1 TAR@FAR and 1:N) with `--ijb ROOT`."""

from __future__ import annotations

import argparse
import sys

from irface.cli._model import add_model_argument
from irface.errors import UserError

DEFAULT_TARGETS = "lfw,cfp_fp,agedb_30"


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="Verification accuracy on .bin sets (LFW, CFP-FP, AgeDB-30, ...)",
        description="Evaluate a model with the seed's 10-fold verification protocol. Prints, per target, "
                    "[name]XNorm, [name]Accuracy and [name]Accuracy-Flip exactly as the seed's eval.py does, "
                    "then a table with AUC, EER, TAR@FAR and the best threshold as a cosine similarity.")
    add_model_argument(p, required=False, aliases=("--ckpt",))
    p.add_argument("--data", metavar="DIR", help="folder holding the <target>.bin files")
    p.add_argument("--targets", default=DEFAULT_TARGETS,
                   help=f"comma-separated .bin names in DIR (default: {DEFAULT_TARGETS}); any set works, "
                        "e.g. calfw,cplfw,cfp_ff,vgg2_fp")
    p.add_argument("--network", default=None, metavar="NAME",
                   help="check the weights are this architecture (iresnet18/34/50/100/200); read off the keys otherwise")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 runs the network under bfloat16 autocast (PyTorch models)")
    p.add_argument("--no-flip", action="store_true",
                   help="skip the mirrored images (no Accuracy-Flip; half the work)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write every figure as one JSON object to FILE, or to stdout (and nothing else there) "
                        "when FILE is left out; the seed's lines then go to stderr")
    p.add_argument("--plot", metavar="FILE.png", help="ROC curves of all targets in one PNG (needs matplotlib)")
    ijb = p.add_argument_group("IJB-B / IJB-C (instead of --data; see docs/eval.md)")
    ijb.add_argument("--ijb", metavar="ROOT", help="the IJB folder (holding loose_crop/ and meta/, or <TARGET>/ with them)")
    ijb.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC", help="which set (default IJBC)")
    ijb.add_argument("--features", metavar="FILE",
                     help="image features cache (.npz): read when it exists (no model needed), else written; "
                          "a killed run resumes from FILE.parts/")
    ijb.add_argument("--normalize-images", action="store_true",
                     help="L2-normalise each image feature before pooling (mode N0; default N1 keeps the norm)")
    ijb.add_argument("--no-detector-score", action="store_true",
                     help="do not weight images by their faceness score (mode D0)")
    ijb.add_argument("--skip-missing", action="store_true",
                     help="skip (and count) images that are missing, unreadable or whose landmarks lie outside them")
    ijb.add_argument("--workers", type=int, default=2, metavar="N", help="image loading processes (default 2)")
    p.set_defaults(func=run)


def _preflight(args: argparse.Namespace, *more_outputs: str | None) -> None:
    """The checks both evaluations make before minutes of work, not after: sizes, writable outputs, matplotlib."""
    from irface.utils import check_writable

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    for target in (args.json if args.json != "-" else None, args.plot, *more_outputs):
        if target:
            check_writable(target)
    if args.plot:
        from irface.eval.plot import require_matplotlib

        require_matplotlib()


def run(args: argparse.Namespace) -> int:
    if args.ijb:
        return run_ijb(args)
    if not args.model or not args.data:
        raise UserError("irface eval needs --model MODEL and --data DIR (or --ijb ROOT for IJB-B/IJB-C)")
    from irface.eval import format_table, run_verification, seed_lines
    from irface.cli._output import emit
    from irface.eval.result import report
    from irface.infer import load_model

    _preflight(args)
    model = load_model(args.model, network=args.network, device=args.device, precision=args.precision)
    targets = [t for t in args.targets.split(",") if t.strip()]
    results = run_verification(model.embed, args.data, targets, args.batch_size, flip=not args.no_flip)

    out = sys.stderr if args.json == "-" else sys.stdout
    for line in seed_lines(results) + format_table(results):
        print(line, file=out)

    if args.json:
        meta = {"model": str(args.model), "kind": model.info.get("kind"), "network": model.info.get("network"),
                "data": str(args.data), "device": str(getattr(model, "device", args.device)),
                "precision": args.precision, "batch_size": args.batch_size, "flip": not args.no_flip}
        emit(report(results, **meta), args.json, None)
    if args.plot:
        from irface.eval.plot import plot_roc

        plot_roc(results, args.plot)
    return 0


def run_ijb(args: argparse.Namespace) -> int:
    """IJB-B / IJB-C: features (embedded or from --features), then the 1:1 table and 1:N figures."""
    from irface.cli._output import emit
    from irface.data.ijb import read_ijb
    from irface.eval.ijb import Mode
    from irface.eval.ijb_report import evaluate_ijb, format_report
    from irface.infer.ijb_features import embed_ijb

    if args.data:
        raise UserError("give either --data (.bin sets) or --ijb (IJB-B/IJB-C), not both")
    if args.workers < 0:
        raise UserError(f"--workers must not be negative, got {args.workers}")
    _preflight(args, args.features)
    meta = read_ijb(args.ijb, args.target)
    mode = Mode(norm_score=not args.normalize_images, detector_score=not args.no_detector_score, flip=not args.no_flip)
    model = None
    from pathlib import Path

    if not (args.features and Path(args.features).exists()):
        if not args.model:
            raise UserError("--ijb needs --model MODEL (or an existing --features FILE)")
        from irface.infer import load_model

        model = load_model(args.model, network=args.network, device=args.device, precision=args.precision)
    feats = embed_ijb(model, meta, args.features, batch_size=args.batch_size, workers=args.workers,
                      flip=mode.flip, skip_missing=args.skip_missing)
    report = evaluate_ijb(meta, feats.feats, feats.present, feats.mirrored, mode)
    fpr, tpr = report.pop("_roc")
    report = {"model": args.model, "root": str(meta.root), "features": args.features, **report}
    if feats.skipped:
        report["skipped"] = feats.skipped[:100]
    emit(report, args.json, "\n".join(format_report(report)))
    if args.plot:
        from irface.eval.plot import plot_curves

        plot_curves({f"{report['mode']}-{report['target']}": (fpr, tpr)}, args.plot, title=f"ROC on {meta.target}")
    return 0
