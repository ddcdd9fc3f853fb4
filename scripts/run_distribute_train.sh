#!/usr/bin/env bash
# The seed's multi-device training script, on irface and torchrun:
#   bash scripts/run_distribute_train.sh DATA_PATH DEVICE_NUM [more `irface train` arguments]
# e.g.  bash scripts/run_distribute_train.sh /data/ms1m-retinaface-t1 8
#       bash scripts/run_distribute_train.sh /data/faces 2 --config configs/demo.yaml max_steps=50
# DEVICE_NUM processes on this machine, one per GPU (NCCL), or on CPU when there is no GPU (gloo).
# Trains with configs/lresnet100e_ir_config_gpu.yaml (the seed's recipe) unless another --config is
# given; rank 0 writes the seed's log lines to the console and to train.log in the run's output_dir.
# Environment:
#   PYTHON        interpreter (default: the checkout's .venv, else python3, else python)
#   NNODES        machines in the job (default 1); with more than one also set
#   RDZV_ENDPOINT host:port of the rendezvous (run the same command on every machine)
#   RDZV_ID       job id shared by the machines (default irface)
#   MAX_RESTARTS  torchrun --max-restarts: restart all workers after a failure (default 0); use with
#                 resume=auto so that a restart continues from the newest checkpoint
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "Usage: bash $0 DATA_PATH DEVICE_NUM [irface train arguments ...]" >&2
    exit 2
fi
DATA_PATH=$1
DEVICE_NUM=$2
shift 2
if [ ! -e "$DATA_PATH" ]; then
    echo "$0: DATA_PATH '$DATA_PATH' does not exist" >&2
    exit 2
fi
case "$DEVICE_NUM" in
    ''|*[!0-9]*|0) echo "$0: DEVICE_NUM must be a positive integer, got '$DEVICE_NUM'" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The checkout's own environment (made by `make demo` / `make test`) when there is one.
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
NNODES=${NNODES:-1}

if [ "$NNODES" -gt 1 ]; then
    if [ -z "${RDZV_ENDPOINT:-}" ]; then
        echo "$0: NNODES=$NNODES needs RDZV_ENDPOINT=host:port" >&2
        exit 2
    fi
    LAUNCH=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-irface}")
else
    LAUNCH=(--standalone --nnodes 1)
fi

exec "$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" --nproc-per-node "$DEVICE_NUM" \
    --max-restarts "${MAX_RESTARTS:-0}" \
    -m irface train --config "$ROOT/configs/lresnet100e_ir_config_gpu.yaml" --set "data_path=$DATA_PATH" "$@"
