"""`irface bench train|infer|data|eval|photo|scale`: speed figures (parsing only; the work is in `irface.bench`)."""

from __future__ import annotations

import argparse
from typing import Any, Optional

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


def _common(p: argparse.ArgumentParser, batch: int, steps: int, warmup: int, device: str) -> None:
    p.add_argument("--batch-size", type=int, default=batch, metavar="N", help=f"images per step (default {batch})")
    p.add_argument("--steps", type=int, default=steps, metavar="K", help=f"timed steps; the median is reported (default {steps})")
    p.add_argument("--warmup", type=int, default=warmup, metavar="W", help=f"untimed steps first (default {warmup})")
    p.add_argument("--device", default=device, help=f"cpu, cuda, cuda:N or auto (default {device})")
    add_json_argument(p)


def _network(p: argparse.ArgumentParser, embedding: Optional[int]) -> None:
    g = p.add_argument_group("network (a registered backbone, optionally reshaped)")
    g.add_argument("--network", default="iresnet100", help="backbone name (default iresnet100)")
    g.add_argument("--embedding-size", type=int, default=embedding, metavar="E",
                   help=f"embedding size (default {embedding or 'the network default, 512'})")
    g.add_argument("--layers", type=_int_list, metavar="L1,L2,..", help="blocks per stage (overrides the network's)")
    g.add_argument("--widths", type=_int_list, metavar="W1,W2,..", help="channels per stage")
    g.add_argument("--input-size", type=int, metavar="S", help="input side in pixels (default 112)")


def _speed(p: argparse.ArgumentParser, default_precision: str, channels_last: bool) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=default_precision,
                   help=f"autocast precision (default {default_precision})")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=channels_last,
                   help=f"NHWC memory format (default {'on' if channels_last else 'off'})")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--compare", action="store_true",
                   help="time the eager fp32 NCHW baseline and every faster path side by side, with ratios")
    p.add_argument("--variants", type=_names, metavar="A,B,..",
                   help="with --compare: only these paths (the baseline always runs); names are listed in the output")
    p.add_argument("--sequential", action="store_true",
                   help="with --compare: time the paths one after another (the default on CUDA) instead of in "
                        "interleaved rounds (the default on CPU)")


def register(sub) -> None:
    from irface.config import TrainConfig

    cfg = TrainConfig()
    p = sub.add_parser("bench", help="Measure training, inference, data and eval speed", description=DESCRIPTION)
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT")

    t = bsub.add_parser("train", help="a training step (forward, head, backward, SGD)",
                        description="Time a training step of backbone and head on random data; defaults are "
                                    "`irface train`'s.")
    _common(t, cfg.batch_size, 10, 2, cfg.device)
    _network(t, cfg.embedding_size)
    _speed(t, cfg.precision, cfg.channels_last)
    t.add_argument("--head", default=cfg.head, help=f"softmax, arcface, cosface or combined (default {cfg.head})")
    t.add_argument("--num-classes", type=int, default=cfg.num_classes, metavar="C",
                   help=f"classes of the head (default {cfg.num_classes})")
    t.add_argument("--sample-rate", type=float, default=cfg.sample_rate, metavar="R",
                   help=f"Partial FC sample rate (default {cfg.sample_rate})")
    t.add_argument("--fused-sgd", action="store_true", help="fused SGD kernels")
    t.set_defaults(func=run_train)

    i = bsub.add_parser("infer", help="a forward pass in inference mode",
                        description="Time the backbone's forward pass; defaults are what `irface embed` and "
                                    "`irface eval` run (load_model: BN folded, NHWC, fp32, batch 64).")
    _common(i, 64, 10, 2, "cpu")
    _network(i, None)
    _speed(i, "fp32", True)
    i.add_argument("--model", metavar="FILE", help="a model file irface reads (default: the network with random "
                                                   "weights and BatchNorm statistics set on synthetic faces)")
    i.add_argument("--runtime", choices=("torch", "ort", "ort-int8", "ort-int8-cpu"), default="torch",
                   help="PyTorch, onnxruntime fp32, onnxruntime int8 as `irface export --int8` writes it (QDQ), "
                        "or int8 in onnxruntime's CPU form (QOperator, uint8 activations) (default torch)")
    i.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep the BatchNorms")
    i.add_argument("--calib", metavar="PATH", help="faces (folder or .bin) for int8 calibration and the agreement "
                                                   "check (default: synthetic faces)")
    i.set_defaults(func=run_infer)

    d = bsub.add_parser("data", help="the training loader from a RecordIO folder",
                        description="Time the training loader (read, decode, flip, collate) over a .rec.")
    d.add_argument("data", metavar="FOLDER", help="folder with train.rec/train.idx/property")
    _common(d, cfg.batch_size, 20, 2, "cpu")
    d.add_argument("--workers", type=int, default=cfg.num_workers, metavar="N",
                   help=f"loader worker processes (default {cfg.num_workers})")
    d.set_defaults(func=run_data)

    e = bsub.add_parser("eval", help="the whole verification pass over a .bin",
                        description="Time `irface eval`'s pass over one .bin (decode, embed with flip, protocol).")
    e.add_argument("bin", metavar="BIN", help="a verification .bin (lfw.bin, ...)")
    _common(e, 64, 1, 0, "cpu")
    _network(e, None)
    e.add_argument("--model", metavar="FILE", help="a model file (default: the network with random weights)")
    e.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="as `irface eval` (default fp32)")
    e.add_argument("--no-flip", action="store_true", help="skip the mirrored images")
    e.set_defaults(func=run_eval)

    ph = bsub.add_parser("photo", help="a photo to faces and embeddings (detection, and end to end)",
                         description="Time face detection alone and the whole path from a JPEG photo to the "
                                     "embedding of its face (decode, detect, align, embed), the photo resized to each "
                                     "size, in interleaved rounds.")
    ph.add_argument("photo", metavar="PHOTO", help="a photo with a face (resized to each --sizes)")
    ph.add_argument("--model", required=True, metavar="FILE", help="the embedding model (any file irface reads)")
    ph.add_argument("--sizes", default="640x480,1280x960", metavar="WxH,..", help="photo sizes (default 640x480,1280x960)")
    ph.add_argument("--det-size", type=int, default=640, metavar="S", help="detection size (default 640, as the commands)")
    ph.add_argument("--steps", type=int, default=20, metavar="K", help="timed rounds; the median is reported (default 20)")
    ph.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed calls of each step first (default 3)")
    ph.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_json_argument(ph)
    ph.set_defaults(func=run_photo)

    s = bsub.add_parser("scale", help="the classification head's cost at 100k..10M classes",
                        description="Partial FC memory and time per step against classes, ranks and sample rate: "
                                    "measured here for one rank's share, and computed for a cluster.")
    s.add_argument("--classes", type=_int_list, default=[100_000, 1_000_000, 10_000_000], metavar="C1,C2,..",
                   help="class counts (default 100000,1000000,10000000)")
    s.add_argument("--ranks", type=_int_list, default=[1, 8], metavar="R1,R2,..", help="ranks the head is split over (default 1,8)")
    s.add_argument("--sample-rates", type=_float_list, default=[1.0, 0.1], metavar="R1,R2,..",
                   help="Partial FC sample rates (default 1,0.1)")
    s.add_argument("--embedding-size", type=int, default=64, metavar="E", help="embedding size measured here (default 64)")
    s.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per rank per step (default 64)")
    s.add_argument("--steps", type=int, default=3, metavar="K", help="timed steps per row (default 3)")
    s.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed steps per row (default 1)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    s.add_argument("--max-memory-gb", type=float, default=6.0, metavar="GB",
                   help="skip measured rows estimated above this (default 6)")
    s.add_argument("--head", default="arcface", help="margin head (default arcface)")
    s.add_argument("--paper-embedding-size", type=int, default=512, metavar="E", help="for the computed table (default 512)")
    s.add_argument("--paper-batch-size", type=int, default=128, metavar="N", help="per GPU, for the computed table (default 128)")
    s.add_argument("--gpu-memory-gb", type=float, default=80.0, metavar="GB", help="per GPU, for the computed table (default 80)")
    add_json_argument(s)
    s.set_defaults(func=run_scale)

    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


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


def run_train(args: argparse.Namespace) -> int:
    from irface.bench.report import format_report
    from irface.bench.train import TrainOptions, bench_train

    kw = _backbone_kwargs(args)
    kw.pop("embedding_size", None)
    opts = TrainOptions(network=args.network, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                        precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                        fused_sgd=args.fused_sgd, device=args.device, head=args.head, num_classes=args.num_classes,
                        embedding_size=args.embedding_size, sample_rate=args.sample_rate, compare=args.compare,
                        variants=args.variants, interleave=False if args.sequential else None, backbone_kwargs=kw)
    report = bench_train(opts)
    emit(report, args.json, format_report(report))
    return 0


def run_infer(args: argparse.Namespace) -> int:
    from irface.bench.infer import InferOptions, bench_infer
    from irface.bench.report import format_report

    opts = InferOptions(network=args.network, model=args.model, batch_size=args.batch_size, steps=args.steps,
                        warmup=args.warmup, precision=args.precision, channels_last=args.channels_last,
                        compile=args.compile, fold_bn=args.fold_bn, runtime=args.runtime, device=args.device,
                        compare=args.compare, variants=args.variants, calib=args.calib,
                        interleave=False if args.sequential else None, backbone_kwargs=_backbone_kwargs(args))
    report = bench_infer(opts)
    emit(report, args.json, format_report(report))
    return 0


def run_data(args: argparse.Namespace) -> int:
    from irface.bench.data import bench_data
    from irface.bench.report import format_report

    report = bench_data(args.data, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                        workers=args.workers, device=args.device)
    emit(report, args.json, format_report(report))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from irface.bench.evalpass import bench_eval
    from irface.bench.report import format_report

    report = bench_eval(args.bin, model=args.model, network=args.network, backbone_kwargs=_backbone_kwargs(args),
                        batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, device=args.device,
                        precision=args.precision, flip=not args.no_flip)
    emit(report, args.json, format_report(report))
    return 0


def run_photo(args: argparse.Namespace) -> int:
    from irface.bench.photo import bench_photo, parse_sizes
    from irface.bench.report import format_report

    report = bench_photo(args.photo, args.model, parse_sizes(args.sizes), steps=args.steps, warmup=args.warmup,
                         device=args.device, det_size=args.det_size)
    emit(report, args.json, format_report(report))
    return 0


def run_scale(args: argparse.Namespace) -> int:
    from irface.bench.report import format_report
    from irface.bench.scale import ScaleOptions, bench_scale

    opts = ScaleOptions(classes=args.classes, ranks=args.ranks, sample_rates=args.sample_rates,
                        embedding_size=args.embedding_size, batch_size=args.batch_size, steps=args.steps,
                        warmup=args.warmup, device=args.device, max_memory_gb=args.max_memory_gb, head=args.head,
                        paper_embedding_size=args.paper_embedding_size, paper_batch_size=args.paper_batch_size,
                        gpu_memory_gb=args.gpu_memory_gb)
    report = bench_scale(opts)
    emit(report, args.json, format_report(report))
    return 0
