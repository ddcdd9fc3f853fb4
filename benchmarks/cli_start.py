"""How long `irface --version` and `irface --help` take to start, and which heavy modules they import.

Each command runs in a fresh interpreter (`python -m irface ...`), in interleaved rounds so that the
load of a shared machine falls on every command alike; the median and the fastest round are printed.
`python -c pass` is the interpreter's own start, `import torch` what torch alone costs.

    python benchmarks/cli_start.py --rounds 15
    python benchmarks/cli_start.py --tree before=/path/to/old/src --tree after=src   # two source trees, one run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "numpy", "PIL", "yaml", "onnx", "onnxruntime", "faiss", "fastapi")
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "irface --version": ["-m", "irface", "--version"],
    "irface --help": ["-m", "irface", "--help"],
    "irface data info --help": ["-m", "irface", "data", "info", "--help"],
}
PROBE = ("import sys; from irface.cli import build_parser; build_parser(); "
         f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")


def _env(src: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(src).resolve())}


def _once(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tree", action="append", metavar="NAME=SRC",
                    help="a source tree to time (repeatable; default: this checkout's src)")
    opts = ap.parse_args()
    trees = dict(t.split("=", 1) for t in opts.tree or [f"src={Path(__file__).parent.parent / 'src'}"])
    runs = [(tree, name) for tree in trees for name in COMMANDS
            if not (name in ("python -c pass", "import torch") and tree != next(iter(trees)))]
    times: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    load_before = os.getloadavg()[0]
    for i in range(opts.rounds):
        order = runs[i % len(runs):] + runs[:i % len(runs)]  # rotate, so no command always runs first
        for tree, name in order:
            times[(tree, name)].append(_once(COMMANDS[name], _env(trees[tree])))
    print(f"{opts.rounds} rounds; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    for tree, src in trees.items():
        heavy = subprocess.run([sys.executable, "-c", PROBE], env=_env(src), check=True, capture_output=True,
                               text=True).stdout.strip()
        print(f"[{tree}] {src}: build_parser() imports {heavy or 'none of ' + ', '.join(HEAVY)}")
    for (tree, name), ts in times.items():
        print(f"  {tree:>8}  {name:<26} median {statistics.median(ts):7.0f} ms   fastest {min(ts):7.0f} ms")


if __name__ == "__main__":
    main()
