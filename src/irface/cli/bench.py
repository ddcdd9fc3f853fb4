"""`irface bench train|infer|data|eval|photo|scale`: speed figures (parsing only; the work is in `irface.bench`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional

from irface.cli._model import add_model_argument
from irface.cli._output import add_json_argument, emit
from irface.errors import ConfigError

DESCRIPTION = ("Measure speed: warm-up, then the median of timed steps. Prints images/s, ms per step, peak "
               "memory and the achieved FLOP/s as a fraction of the device's matmul peak measured in the same run. "
               "Defaults are what `train`, `embed` and `eval` run by default. See benchmarks/README.md.")


def _int_list(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _common(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help=f"images per step (default {d.batch_size})")
    p.add_argument("--steps", type=int, default=d.steps, metavar="K", help=f"timed steps; the median is reported (default {d.steps})")
    p.add_argument("--warmup", type=int, default=d.warmup, metavar="W", help=f"untimed steps first (default {d.warmup})")
    p.add_argument("--device", default=d.device, help=f"cpu, cuda, cuda:N or auto (default {d.device})")
    add_json_argument(p)


def _network(p: argparse.ArgumentParser, d: Any, embedding: Optional[int]) -> None:
    g = p.add_argument_group("network (a registered backbone, optionally reshaped)")
    g.add_argument("--network", default=d.network, help=f"backbone name (default {d.network})")
    g.add_argument("--embedding-size", type=int, default=embedding, metavar="E",
                   help=f"embedding size (default {embedding or 'the network default, 512'})")
    g.add_argument("--layers", type=_int_list, metavar="L1,L2,..", help="blocks per stage (overrides the network's)")
    g.add_argument("--widths", type=_int_list, metavar="W1,W2,..", help="channels per stage")
    g.add_argument("--input-size", type=int, metavar="S", help="input side in pixels (default 112)")


def _speed(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=d.precision,
                   help=f"autocast precision (default {d.precision})")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last,
                   help=f"NHWC memory format (default {'on' if d.channels_last else 'off'})")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--compare", action="store_true",
                   help="time the eager fp32 NCHW baseline and every faster path side by side, with ratios")
    p.add_argument("--variants", type=_names, metavar="A,B,..",
                   help="with --compare: only these paths (the baseline always runs); names are listed in the output")
    p.add_argument("--sequential", action="store_true",
                   help="with --compare: time the paths one after another (the default on CUDA) instead of in "
                        "interleaved rounds (the default on CPU)")


def register(sub) -> None:
    from irface.bench.options import (
        RUNTIMES, DataOptions, EvalOptions, InferOptions, PhotoOptions, ScaleOptions, TrainOptions,
    )

    p = sub.add_parser("bench", help="Measure training, inference, data and eval speed", description=DESCRIPTION)
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT")

    d: Any = TrainOptions()  # each command's options in turn (Train, Infer, Data, ... Options)
    t = bsub.add_parser("train", help="a training step (forward, head, backward, SGD)",
                        description="Time a training step of backbone and head on random data; defaults are "
                                    "`irface train`'s.")
    _common(t, d)
    _network(t, d, d.embedding_size)
    _speed(t, d)
    t.add_argument("--head", default=d.head, help=f"softmax, arcface, cosface or combined (default {d.head})")
    t.add_argument("--num-classes", type=int, default=d.num_classes, metavar="C",
                   help=f"classes of the head (default {d.num_classes})")
    t.add_argument("--sample-rate", type=float, default=d.sample_rate, metavar="R",
                   help=f"Partial FC sample rate (default {d.sample_rate})")
    t.add_argument("--fused-sgd", action="store_true", help="fused SGD kernels")
    t.set_defaults(func=_runner("train:bench_train", TrainOptions))

    d = InferOptions()
    i = bsub.add_parser("infer", help="a forward pass in inference mode",
                        description="Time the backbone's forward pass; defaults are what `irface embed` and "
                                    "`irface eval` run (load_model: BN folded, NHWC, fp32, batch 64).")
    _common(i, d)
    _network(i, d, None)
    _speed(i, d)
    add_model_argument(i, required=False, default="the network with random weights and BatchNorm statistics set on "
                                                  "synthetic faces")
    i.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="PyTorch, onnxruntime fp32, onnxruntime int8 as `irface export --int8` writes it (QDQ), "
                        f"or int8 in onnxruntime's CPU form (QOperator, uint8 activations) (default {d.runtime})")
    i.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep the BatchNorms")
    i.add_argument("--calib", metavar="PATH", help="faces (folder or .bin) for int8 calibration and the agreement "
                                                   "check (default: synthetic faces)")
    i.set_defaults(func=_runner("infer:bench_infer", InferOptions))

    d = DataOptions()
    r = bsub.add_parser("data", help="the training loader from a RecordIO folder",
                        description="Time the training loader (read, decode, flip, collate) over a .rec.")
    r.add_argument("data", metavar="FOLDER", help="folder with train.rec/train.idx/property")
    _common(r, d)
    r.add_argument("--workers", type=int, default=d.workers, metavar="N",
                   help=f"loader worker processes (default {d.workers})")
    r.set_defaults(func=_runner("data:bench_data", DataOptions))

    d = EvalOptions()
    e = bsub.add_parser("eval", help="the whole verification pass over a .bin",
                        description="Time `irface eval`'s pass over one .bin (decode, embed with flip, protocol).")
    e.add_argument("bin", metavar="BIN", help="a verification .bin (lfw.bin, ...)")
    _common(e, d)
    _network(e, d, None)
    add_model_argument(e, required=False, default="the network with random weights")
    e.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=d.precision,
                   help=f"as `irface eval` (default {d.precision})")
    e.add_argument("--no-flip", dest="flip", action="store_false", help="skip the mirrored images")
    e.set_defaults(func=_runner("evalpass:bench_eval", EvalOptions))

    d = PhotoOptions()
    ph = bsub.add_parser("photo", help="a photo to faces and embeddings (detection, and end to end)",
                         description="Time face detection alone and the whole path from a JPEG photo to the "
                                     "embedding of its face (decode, detect, align, embed), the photo resized to each "
                                     "size, in interleaved rounds.")
    ph.add_argument("photo", metavar="PHOTO", help="a photo with a face (resized to each --sizes)")
    add_model_argument(ph)
    ph.add_argument("--sizes", default=d.sizes, metavar="WxH,..", help=f"photo sizes (default {d.sizes})")
    ph.add_argument("--det-size", type=int, default=d.det_size, metavar="S",
                    help=f"detection size (default {d.det_size}, as the commands)")
    ph.add_argument("--steps", type=int, default=d.steps, metavar="K",
                    help=f"timed rounds; the median is reported (default {d.steps})")
    ph.add_argument("--warmup", type=int, default=d.warmup, metavar="W",
                    help=f"untimed calls of each step first (default {d.warmup})")
    ph.add_argument("--device", default=d.device, help=f"cpu, cuda or cuda:N (default {d.device})")
    add_json_argument(ph)
    ph.set_defaults(func=_runner("photo:bench_photo", PhotoOptions))

    d = ScaleOptions()
    s = bsub.add_parser("scale", help="the classification head's cost at 100k..10M classes",
                        description="Partial FC memory and time per step against classes, ranks and sample rate: "
                                    "measured here for one rank's share, and computed for a cluster.")

    def listed(values: list) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    s.add_argument("--classes", type=_int_list, default=d.classes, metavar="C1,C2,..",
                   help=f"class counts (default {listed(d.classes)})")
    s.add_argument("--ranks", type=_int_list, default=d.ranks, metavar="R1,R2,..",
                   help=f"ranks the head is split over (default {listed(d.ranks)})")
    s.add_argument("--sample-rates", type=_float_list, default=d.sample_rates, metavar="R1,R2,..",
                   help=f"Partial FC sample rates (default {listed(d.sample_rates)})")
    for flag, kind, metavar, what in [
            ("--embedding-size", int, "E", "embedding size measured here"),
            ("--batch-size", int, "N", "images per rank per step"), ("--steps", int, "K", "timed steps per row"),
            ("--warmup", int, "W", "untimed steps per row"), ("--device", str, None, "cpu, cuda or cuda:N"),
            ("--max-memory-gb", float, "GB", "skip measured rows estimated above this"),
            ("--head", str, None, "margin head"), ("--paper-embedding-size", int, "E", "for the computed table"),
            ("--paper-batch-size", int, "N", "per GPU, for the computed table"),
            ("--gpu-memory-gb", float, "GB", "per GPU, for the computed table")]:
        default = getattr(d, flag[2:].replace("-", "_"))
        s.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{what} (default {default})")
    add_json_argument(s)
    s.set_defaults(func=_runner("scale:bench_scale", ScaleOptions))

    p.set_defaults(help_parser=p)


def _backbone_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.layers:
        kw["layers"] = args.layers
        if not args.widths:
            raise ConfigError("--layers needs --widths (one per stage)")
    if args.widths:
        kw["widths"] = args.widths
    if args.input_size:
        kw["input_size"] = args.input_size
    if args.embedding_size:
        kw["embedding_size"] = args.embedding_size
    return kw


def _options(cls: type, args: argparse.Namespace) -> Any:
    """`cls` (an options dataclass of `irface.bench.options`) from the parsed arguments of the same names; a
    reshaped network (--layers, --widths, ...) as its `backbone_kwargs` (but for the options it has itself:
    train's --embedding-size is its head's), --sequential as `interleave=False`."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if "backbone_kwargs" in names:
        values["backbone_kwargs"] = {k: v for k, v in _backbone_kwargs(args).items() if k not in names}
    if "interleave" in names:
        values["interleave"] = False if args.sequential else None
    return cls(**values)


def _runner(run: str, cls: type) -> Callable[[argparse.Namespace], int]:
    """A bench command's `func`: its options (`cls`) from the arguments, then `run` ("module:function" of
    `irface.bench`, imported only now: the parser imports no torch) on them; the report printed or written."""

    def command(args: argparse.Namespace) -> int:
        import importlib

        from irface.bench.report import format_report

        module, function = run.split(":")
        report = getattr(importlib.import_module(f"irface.bench.{module}"), function)(_options(cls, args))
        emit(report, args.json, format_report(report))
        return 0

    return command
