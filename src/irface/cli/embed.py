"""`irface embed`: embed aligned face images into L2-normalised vectors."""

from __future__ import annotations

import argparse

from irface.cli._output import add_json_argument, emit


def register(sub) -> None:
    p = sub.add_parser(
        "embed", help="Embed aligned face images into L2-normalised vectors",
        description="Embed aligned face crops (image files, folders searched recursively in sorted order, or a "
                    "RecordIO folder) with any model file irface reads, and write L2-normalised embeddings with "
                    "the list of sources: .npy (+ sidecar .txt of names), .npz (embeddings, names) or .parquet "
                    "(needs pyarrow). See docs/inference.md.")
    p.add_argument("model", metavar="MODEL", help="checkpoint, run folder, .pth, .safetensors, .onnx or TorchScript")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, image folders, or a folder with train.rec")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="emb.npy, emb.npz or emb.parquet")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision for PyTorch models on CUDA (default fp32)")
    p.add_argument("--network", help="backbone name for a bare state dict (checked if given)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.infer import load_model
    from irface.infer.embed import check_output, embed_to_file

    check_output(args.output)  # refuse a bad output before loading anything
    embedder = load_model(args.model, args.network, device=args.device, precision=args.precision)
    summary = embed_to_file(embedder, args.inputs, args.output, args.batch_size, args.progress)
    summary["model"] = args.model
    emit(summary, args.json, f"wrote {summary['count']} embeddings ({summary['embedding_size']}-d, L2-normalised) "
                             f"to {', '.join(summary['files'])}")
    return 0
