"""Options shared by the commands that open a model: device, network, how a foreign model wants its input."""

from __future__ import annotations

import argparse


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--device, --network, a foreign model's input normalisation (--input-mean, --input-std, --bgr) and
    how an ONNX model is fed (--layout, --output-name)."""
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--network", help="backbone name for a bare state dict (checked if given)")
    g = p.add_argument_group("input normalisation (for foreign models; irface's own files carry theirs)")
    g.add_argument("--input-mean", metavar="M", help="x' = (x - M) / S on 0..255 pixels: one number or R,G,B "
                                                     "(insightface: 127.5; ImageNet: 123.675,116.28,103.53)")
    g.add_argument("--input-std", metavar="S", help="one number or R,G,B (insightface: 127.5; "
                                                    "ImageNet: 58.395,57.12,57.375; OpenCV's SFace: 1)")
    g.add_argument("--bgr", action="store_true", help="the model wants BGR channel order (default RGB)")
    g = p.add_argument_group("how an ONNX model is fed (read from its graph and printed; force it here)")
    g.add_argument("--layout", choices=("nchw", "nhwc"), help="the image input's layout: nchw (batch, 3, H, W) "
                                                            "or nhwc (batch, H, W, 3), e.g. TensorFlow/Keras models")
    g.add_argument("--output-name", metavar="NAME", help="the output holding the embedding, when the model has several")


def model_from_args(args: argparse.Namespace, precision: str = "fp32"):
    from irface.infer import load_model

    return load_model(args.model, getattr(args, "network", None), device=args.device, precision=precision,
                      input_mean=args.input_mean, input_std=args.input_std, bgr=args.bgr,
                      layout=args.layout, output_name=args.output_name)
