"""`irface verify`: compare two face images."""

from __future__ import annotations

import argparse

from irface.cli._output import add_json_argument, emit


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="Compare two face images (cosine similarity, same or different)",
        description="Embed two faces and compare them: cosine similarity against a threshold (default: the one "
                    "stored with the model, else 0.28). Images are aligned 112x112 crops (others are resized "
                    "like .bin images), or photos aligned from 5 landmarks given with --landmarks-a/-b. "
                    "See docs/inference.md.")
    p.add_argument("model", metavar="MODEL", help="checkpoint, run folder, .pth, .safetensors, .onnx or TorchScript")
    p.add_argument("image_a", metavar="A", help="first face image")
    p.add_argument("image_b", metavar="B", help="second face image")
    p.add_argument("--threshold", type=float, help="cosine similarity at or above which the faces are the same person")
    p.add_argument("--landmarks-a", metavar="x1,y1,...,x5,y5", help="align A from these 5 landmarks first")
    p.add_argument("--landmarks-b", metavar="x1,y1,...,x5,y5", help="align B from these 5 landmarks first")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--network", help="backbone name for a bare state dict (checked if given)")
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.infer import load_model, verify_pair

    embedder = load_model(args.model, args.network, device=args.device)
    result = verify_pair(embedder, args.image_a, args.image_b, args.threshold, args.landmarks_a, args.landmarks_b)
    verdict = "same person" if result["same"] else "different people"
    emit(result, args.json, f"similarity {result['similarity']:.4f}: {verdict} "
                            f"(threshold {result['threshold']:g}, from the {result['threshold_source']})")
    return 0
