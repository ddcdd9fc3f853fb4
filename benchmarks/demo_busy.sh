#!/usr/bin/env bash
# The demo as a newcomer meets it: a fresh clone, `make demo` (the install included) timed wall-clock,
# with BUSY CPU-bound busy loops (default 1; 0 for none) sharing the cores from start to end.
#   bash benchmarks/demo_busy.sh [WORK_DIR]
# Clones the checkout's committed HEAD into WORK_DIR (default: a new folder under /tmp), so uncommitted
# changes are not part of the run; the last line says how long it took, when, on what and how loaded.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/irface-demo-XXXXXX)}
BUSY=${BUSY:-1}
git clone -q "$ROOT" "$WORK/irface"
pids=()
trap 'if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; fi' EXIT
for _ in $(seq 1 "$BUSY"); do
    python3 -c "while True: pass" &
    pids+=($!)
done
cd "$WORK/irface"
start=$(date +%s)
make demo 2>&1 | tee demo.log
echo "make demo on a fresh clone, install included: $(( $(date +%s) - start )) s wall-clock with $BUSY busy loop(s);" \
     "$(date -u +%Y-%m-%dT%H:%MZ); $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
     "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
