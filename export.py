#!/usr/bin/env python3
"""The seed's export script, kept for its users: `python export.py --ckpt_file CKPT --file_name NAME --file_format FMT`.

FMT is ONNX, TORCHSCRIPT, PTH or SAFETENSORS (the seed's AIR and MINDIR are MindSpore-only formats).
NAME gets the format's suffix unless it already has it. Everything else is `irface export`
(see docs/export.md); this wrapper only translates the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUFFIX = {"ONNX": ".onnx", "TORCHSCRIPT": ".pt", "PTH": ".pth", "SAFETENSORS": ".safetensors"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a checkpoint (seed-style arguments; see `irface export`).")
    parser.add_argument("--ckpt_file", required=True, help="checkpoint, run folder, .pth, .safetensors or MindSpore .ckpt")
    parser.add_argument("--file_name", default="lresnet100e_ir", help="output name (suffix added if missing)")
    parser.add_argument("--file_format", default="ONNX", type=str.upper,
                        help="ONNX (default), TORCHSCRIPT, PTH or SAFETENSORS")
    parser.add_argument("--batch_size", default="dynamic", help="ONNX batch: a number or 'dynamic' (default)")
    parser.add_argument("--network", default=None, help="check the backbone name (e.g. iresnet100)")
    args = parser.parse_args(argv)
    if args.file_format in ("AIR", "MINDIR"):
        print(f"export.py: error: {args.file_format} is a MindSpore format; use ONNX, TORCHSCRIPT, PTH or SAFETENSORS",
              file=sys.stderr)
        return 2
    if args.file_format not in SUFFIX:
        print(f"export.py: error: unknown --file_format {args.file_format}; use {', '.join(SUFFIX)}", file=sys.stderr)
        return 2
    name = args.file_name
    if Path(name).suffix.lower() != SUFFIX[args.file_format]:
        name += SUFFIX[args.file_format]
    src = Path(__file__).resolve().parent / "src"
    if (src / "irface").is_dir():  # the checkout this script belongs to, installed or not
        sys.path.insert(0, str(src))
    from irface.cli import main as irface_main

    cmd = ["export", "--ckpt", args.ckpt_file, "--output", name, "--format", args.file_format.lower(),
           "--batch-size", str(args.batch_size)]
    if args.network:
        cmd += ["--network", args.network]
    return irface_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
