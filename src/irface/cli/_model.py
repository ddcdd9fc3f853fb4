"""Options shared by the commands that open a model: the model itself, device, network, how a foreign model
wants its input."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from irface.errors import ConfigError

# What a model file may be, said once: `irface.infer.load_model` reads all of these; export takes
# only the PyTorch ones (`models.loading.load_backbone`).
MODEL_HELP = ("an irface checkpoint or run folder, a bare state dict (.pth), .safetensors, a MindSpore .ckpt, "
              "ONNX or TorchScript")
WEIGHTS_HELP = "an irface checkpoint or run folder, a bare state dict (.pth), .safetensors or a MindSpore .ckpt"


def add_model_argument(p: argparse.ArgumentParser, *, positional: bool = False, required: bool = True,
                       weights_only: bool = False, default: Optional[str] = None, aliases: Sequence[str] = (),
                       spill: Optional[str] = None) -> None:
    """The model file, as `--model MODEL` (and `aliases`, e.g. the older `--ckpt`), read back as `args.model`.

    `positional`: also the first positional MODEL (verify, embed and calibrate have always taken it so); then
    `spill` names the positional list after it, which gets back its first word when --model is given too
    (argparse fills MODEL first). `default` says what is used without it (`required` must be False then).
    """
    text = (WEIGHTS_HELP if weights_only else MODEL_HELP) + (f" (default: {default})" if default else "")
    if positional:
        p.add_argument("model", nargs="?", metavar="MODEL", help=f"the model: {text}; or give it as --model MODEL")
        p.add_argument("--model", dest="model_option", metavar="MODEL", help=argparse.SUPPRESS)
        p.set_defaults(model_spill=spill)
    else:
        p.add_argument("--model", *aliases, dest="model", required=required, metavar="MODEL", help=text)


def resolve_model(args: argparse.Namespace) -> str:
    """`args.model` from either spelling of `add_model_argument(positional=True)`; ConfigError when missing."""
    option = getattr(args, "model_option", None)
    if option is not None:
        if args.model is not None:
            if args.model_spill is None:
                raise ConfigError(f"the model is given twice ({args.model} and --model {option}); give one")
            getattr(args, args.model_spill).insert(0, args.model)
        args.model, args.model_option = option, None
    if args.model is None:
        raise ConfigError("no model: give MODEL or --model MODEL")
    return args.model


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


def model_options(args: argparse.Namespace, precision: str = "fp32") -> dict:
    """`load_model`'s keyword arguments from the options above: what `irface embed --ray` hands its actors."""
    return {"path": resolve_model(args), "network": getattr(args, "network", None), "device": args.device,
            "precision": precision, "input_mean": args.input_mean, "input_std": args.input_std, "bgr": args.bgr,
            "layout": args.layout, "output_name": args.output_name}


def model_from_args(args: argparse.Namespace, precision: str = "fp32"):
    from irface.infer import load_model

    return load_model(**model_options(args, precision))
