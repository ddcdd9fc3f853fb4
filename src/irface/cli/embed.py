"""`irface embed`: embed faces (photos are detected and aligned first) into L2-normalised vectors."""

from __future__ import annotations

import argparse

from irface.cli._faces import add_face_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args, model_options
from irface.cli._output import add_json_argument, emit, skipped_text
from irface.cli._ray import add_ray_arguments, ray_options, refuse_without_ray


def register(sub) -> None:
    p = sub.add_parser(
        "embed", help="Embed faces in photos or aligned crops into L2-normalised vectors",
        description="Embed the faces of photos or aligned crops (image files, folders searched recursively in "
                    "sorted order, or a RecordIO folder) with any model file irface reads, and write L2-normalised "
                    "embeddings with the list of sources: .npy (+ sidecar .txt of names), .npz (embeddings, names) "
                    "or .parquet (needs pyarrow). An image of exactly the model's input size (112x112) is taken as "
                    "an aligned crop; any other is detected and aligned (largest face, or each with --all-faces). "
                    "Photos without a face or unreadable are reported and skipped. See docs/inference.md.")
    add_model_argument(p, positional=True, spill="inputs")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, image folders, or a folder with train.rec")
    p.add_argument("--output", "-o", required=True, metavar="FILE",
                   help="emb.npy, emb.npz or emb.parquet; with --ray, a folder of Parquet shards")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision for PyTorch models on CUDA (default fp32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    p.add_argument("--quality", action="store_true",
                   help="also write each face's feature norm (the model output's length before L2 normalisation): "
                        "emb.norm.npy beside emb.npy, array 'norm' in .npz, column 'norm' in .parquet. A quality "
                        "score only for MagFace- or AdaFace-trained models")
    add_model_arguments(p)
    add_face_arguments(p)
    add_ray_arguments(p, "detect and align in Ray tasks, embed in a pool of model actors (one per GPU), and write "
                         "--output as a folder of Parquet shards with a manifest; a rerun resumes")
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ray is not None:
        return run_ray(args)
    refuse_without_ray(args)
    from irface.infer.embed import check_output, embed_to_file

    check_output(args.output)  # refuse a bad output before loading anything
    embedder = model_from_args(args, precision=args.precision)
    summary = embed_to_file(embedder, args.inputs, args.output, args.batch_size, args.progress,
                            mode=args.face_mode, all_faces=args.all_faces, strict=args.strict,
                            detector=detector_from_args(args), quality=args.quality)
    summary["model"] = args.model
    text = (f"wrote {summary['count']} embeddings ({summary['embedding_size']}-d, L2-normalised) "
            f"to {', '.join(summary['files'])}")
    emit(summary, args.json, text + _norms_and_skips(summary))
    return 0


def _norms_and_skips(summary: dict) -> str:
    text = ""
    if "norm" in summary:
        n = summary["norm"]
        text += f"\nfeature norms {n['min']:.4g} to {n['max']:.4g} (median {n['median']:.4g})"
    return text + skipped_text(summary)


def run_ray(args: argparse.Namespace) -> int:
    from irface.infer.ray_embed import embed_to_shards

    summary = embed_to_shards(model_options(args, precision=args.precision), args.inputs, args.output,
                              all_faces=args.all_faces, strict=args.strict, quality=args.quality, **ray_options(args))
    summary["model"] = args.model
    shards = summary["shards"]
    text = (f"wrote {summary['count']} embeddings ({summary['embedding_size']}-d, L2-normalised) of "
            f"{summary['photos']} photos to {summary['output']}: {shards['total']} Parquet shards "
            f"({shards['written']} now, {shards['done_before']} done before) and {summary['files'][0]}")
    emit(summary, args.json, text + _norms_and_skips(summary))
    return 0
