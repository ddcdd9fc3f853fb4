"""`irface eval`: the seed's verification protocol on `.bin` sets (LFW, CFP-FP, AgeDB-30, ...)."""

from __future__ import annotations

import argparse
import sys

from irface.errors import UserError

DEFAULT_TARGETS = "lfw,cfp_fp,agedb_30"


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="Verification accuracy on .bin sets (LFW, CFP-FP, AgeDB-30, ...)",
        description="Evaluate a model with the seed's 10-fold verification protocol. Prints, per target, "
                    "[name]XNorm, [name]Accuracy and [name]Accuracy-Flip exactly as the seed's eval.py does, "
                    "then a table with AUC, EER, TAR@FAR and the best threshold as a cosine similarity.")
    p.add_argument("--ckpt", required=True, metavar="MODEL",
                   help="irface checkpoint or run folder, bare state dict (.pth), .safetensors, ONNX, "
                        "TorchScript or MindSpore .ckpt")
    p.add_argument("--data", required=True, metavar="DIR", help="folder holding the <target>.bin files")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.eval import format_seed_lines, format_table, run_verification
    from irface.cli._output import emit
    from irface.eval.result import report
    from irface.infer import load_model
    from irface.utils import check_writable

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    for target in (args.json if args.json != "-" else None, args.plot):
        if target:
            check_writable(target)  # before minutes of work, not after
    if args.plot:
        from irface.eval.plot import require_matplotlib

        require_matplotlib()  # before minutes of work, not after
    model = load_model(args.ckpt, network=args.network, device=args.device, precision=args.precision)
    targets = [t for t in args.targets.split(",") if t.strip()]
    results = run_verification(model.embed, args.data, targets, args.batch_size, flip=not args.no_flip)

    out = sys.stderr if args.json == "-" else sys.stdout
    for name, result in results.items():
        for line in format_seed_lines(name, result):
            print(line, file=out)
    for line in format_table(results):
        print(line, file=out)

    if args.json:
        meta = {"model": str(args.ckpt), "kind": model.info.get("kind"), "network": model.info.get("network"),
                "data": str(args.data), "device": str(getattr(model, "device", args.device)),
                "precision": args.precision, "batch_size": args.batch_size, "flip": not args.no_flip}
        emit(report(results, **meta), args.json, None)
    if args.plot:
        from irface.eval.plot import plot_roc

        plot_roc(results, args.plot)
    return 0
