"""`irface convert`: foreign checkpoints (MindSpore .ckpt) to irface / PyTorch files."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("convert", help="Convert foreign checkpoints (MindSpore .ckpt) to irface",
                       description="Convert checkpoints of other frameworks into files irface and PyTorch load.")
    kinds = p.add_subparsers(dest="source_format", metavar="FORMAT", required=True)
    ms = kinds.add_parser(
        "mindspore", help="a MindSpore .ckpt of the seed's IResNet (no MindSpore needed)",
        description="Read a MindSpore checkpoint of the seed's LResNet-E-IR and write it as a bare PyTorch "
                    "state dict (.pth), safetensors (.safetensors) or an irface checkpoint (.pt, which also "
                    "keeps the seed's classifier as a softmax head). Optimizer state is dropped.")
    ms.add_argument("ckpt", metavar="CKPT", help="the MindSpore .ckpt file")
    ms.add_argument("--output", "-o", required=True, metavar="FILE",
                    help="backbone.pth | model.safetensors | checkpoint.pt (the suffix picks the kind)")
    ms.add_argument("--network", default=None, metavar="NAME",
                    help="check the weights are this architecture (iresnet18/34/50/100); read off the keys otherwise")
    ms.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.interop.convert import convert_mindspore

    s = convert_mindspore(args.ckpt, args.output, network=args.network)
    arch = s["network"] or f"IResNet {s['arch']}"
    extra = []
    if s["classes"]:
        fate = "kept as a softmax head" if s["head_written"] else "dropped (kept only in .pt)"
        extra.append(f"classifier of {s['classes']:,} classes {fate}")
    if s["ignored"]:
        extra.append(f"{s['ignored']:,} optimizer/bookkeeping entries ignored")
    if s["prelu_clamped"]:
        extra.append(f"{s['prelu_clamped']} negative PReLU slopes set to 0 as MindSpore computes")
    print(f"wrote {s['output']}: {arch}, {s['tensors']} tensors, {s['parameters']:,} parameters"
          + ("; " + "; ".join(extra) if extra else ""))
    return 0
