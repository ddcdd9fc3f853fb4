#!/usr/bin/env bash
# The whole GPU benchmark set in about 5 minutes (H200: 57 s infer, 44 s train, 36 s trainer, 28 s head,
# 150 s compiled training step), one JSON out.
#   bash benchmarks/gpu.sh [OUT.json] [extra gpu.py flags]
#   bash benchmarks/gpu.sh /tmp/t.json --device cpu --tiny     # checks the script on a CPU
# Needs a CUDA build of torch (`make demo TORCH_SPEC=torch` or `pip install torch`) and irface installed
# or importable from src/. The figures go in benchmarks/README.md with the card's name and the date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S).json}"
shift || true
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$(dirname "$OUT")"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
date
# 330 s: the set finishes inside it; a part cut short leaves the parts before it in the JSON.
timeout --signal=INT 330 "$PY" benchmarks/gpu.py --out "$OUT" "$@"
