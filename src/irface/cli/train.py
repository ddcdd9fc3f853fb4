"""`irface train`: train a backbone and head (one process, or each process of a torchrun job)."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

EPILOG = """examples:
  irface train --config configs/demo.yaml data_path=/data/faces max_steps=50
  irface train --config configs/lresnet100e_ir_arcface.yaml data_path=/data/ms1m-retinaface-t1 resume=auto
  torchrun --nproc_per_node 8 -m irface train --config configs/lresnet100e_ir_config_gpu.yaml data_path=/data/ms1m
every key and its default: docs/config.md; the engine: docs/training.md"""


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a backbone and head, one process or under torchrun",
        description="Train a backbone and head. The same command runs in one process or in each process of "
                    "`torchrun --nproc_per_node N -m irface train ...` (NCCL on GPUs, gloo on CPU).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys (defaults: the seed's values)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config keys on top of the file, e.g. max_steps=50 schedule=[8,14] precision=bf16")
    p.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="a config key like the positional ones, usable before other options (scripts use it); "
                        "positional key=value arguments win over it")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the run's summary (step, loss, checkpoint, verification) as one JSON object "
                        "to FILE, or to stdout when no FILE is given")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface import dist
    from irface.config import load_config
    from irface.engine import NonFiniteLossError, train
    from irface.cli._output import emit
    from irface.utils import check_writable

    cfg = load_config(args.config, [*args.set, *args.overrides])
    if args.json and args.json != "-":
        check_writable(args.json)  # before hours of training, not after
    code = 0
    try:
        result = train(cfg)
        if args.json and dist.get_rank() == 0:
            emit(result.to_dict(), args.json, None)
    except NonFiniteLossError as e:
        print(f"irface train: stopped: {e}", file=sys.stderr)
        code = 1
    if dist.get_world_size() > 1:  # a torchrun worker, its process group torn down by train
        dist.leave(code)
    return code
