#!/usr/bin/env bash
# Evaluate a model on lfw, cfp_fp and agedb_30 as the seed's scripts/run_eval.sh does.
#   bash scripts/run_eval.sh EVAL_PATH CKPT_PATH [more `irface eval` arguments]
# EVAL_PATH holds lfw.bin, cfp_fp.bin and agedb_30.bin; CKPT_PATH is any model file `irface eval`
# takes (irface checkpoint or run folder, .pth, .safetensors, ONNX, TorchScript, MindSpore .ckpt).
# The output goes to the terminal and to eval.log in the current folder. Unlike the seed's script
# this one runs in the foreground and exits with irface's status; use `nohup ... &` for background.
# The irface used: $IRFACE_PYTHON -m irface if set, else `irface` on PATH, else the repository's .venv,
# else python3 -m irface.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "Usage: bash run_eval.sh [EVAL_PATH] [CKPT_PATH] [more irface eval arguments]"
    exit 1
fi
EVAL_PATH=$1
CKPT_PATH=$2
shift 2

if [ ! -d "$EVAL_PATH" ]; then
    echo "error: EVAL_PATH=$EVAL_PATH is not a directory"
    exit 1
fi
if [ ! -e "$CKPT_PATH" ]; then
    echo "error: CKPT_PATH=$CKPT_PATH does not exist"
    exit 1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${IRFACE_PYTHON:-}" ]; then
    IRFACE=("$IRFACE_PYTHON" -m irface)
elif command -v irface >/dev/null 2>&1; then
    IRFACE=(irface)
elif [ -x "$ROOT/.venv/bin/irface" ]; then
    IRFACE=("$ROOT/.venv/bin/irface")
else
    IRFACE=(python3 -m irface)
fi

echo "start inferring: ${IRFACE[*]} eval --ckpt $CKPT_PATH --data $EVAL_PATH (log in eval.log)"
"${IRFACE[@]}" eval --ckpt "$CKPT_PATH" --data "$EVAL_PATH" --targets lfw,cfp_fp,agedb_30 "$@" 2>&1 | tee eval.log
