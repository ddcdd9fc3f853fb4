#!/usr/bin/env bash
# The seed's one-device training script, on irface:
#   bash scripts/run_standalone_train.sh DATA_PATH [more `irface train` arguments]
# e.g.  bash scripts/run_standalone_train.sh /data/ms1m-retinaface-t1
#       bash scripts/run_standalone_train.sh /data/faces --config configs/demo.yaml max_steps=50
# Trains with configs/lresnet100e_ir_config_gpu.yaml (the seed's recipe) unless another --config is
# given; the seed's log lines go to the console and to train.log in the run's output_dir.
# Environment: PYTHON (default: python3, or python), DEVICE_ID (a GPU index; default: the first).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "Usage: bash $0 DATA_PATH [irface train arguments ...]" >&2
    exit 2
fi
DATA_PATH=$1
shift
if [ ! -e "$DATA_PATH" ]; then
    echo "$0: DATA_PATH '$DATA_PATH' does not exist" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The checkout's own environment (made by `make demo` / `make test`) when there is one.
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
if [ -n "${DEVICE_ID:-}" ]; then
    export CUDA_VISIBLE_DEVICES=$DEVICE_ID
fi

exec "$PYTHON" -m irface train --config "$ROOT/configs/lresnet100e_ir_config_gpu.yaml" \
    --set "data_path=$DATA_PATH" "$@"
