#!/usr/bin/env bash
# One prepared check for a lent H100/H200 (no network; its python3 has torch, Triton, pytest, nvcc).
# Steps, most valuable first (a run cut short still leaves the earlier results in $OUT):
#   1. build lmdeq._C with the CUDA kernels for sm_90 (editable install, no build isolation); `lmdeq info`;
#   2. the speed-up benchmark (cifar10-large, batch 128): (a) original MDEQ vs (b) authors' vs (c) lmdeq
#      fast path (a-priori counts, no host syncs, CUDA-graphed solves);
#   3. the GPU tests: every op on the CUDA and Triton backends against the float64 reference, and the
#      CUDA-graphed solves (deq_solve and the MDEQ model) against the eager solves;
#   4. fast-path variants: bf16 autocast, NCHW instead of channels_last, checked solves without graphs;
#   5. the kernel benchmarks (quick), which end with a short table and the speed targets;
#   6. a summary table.
# Logs and results go to $OUT when set (the device tool), else to benchmarks/results/.
# Budget: each step has its own timeout and the steps after the build share BUDGET_S (default 420 s),
# so the whole script fits in the device tool's 10 minutes per call.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }
# limit N: N seconds, or what is left of the budget if less (at least 10)
limit() { local left=$((DEADLINE - $(date +%s))); [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"; }
bench() {  # bench SECONDS LOG ARGS...: one `lmdeq bench` run, logged
  local secs=$1 log=$2; shift 2
  timeout "$(limit "$secs")" $PY -m lmdeq.cli bench --steps 5 --warmup 2 --out "$OUT_DIR" "$@" \
    >"$OUT_DIR/$log" 2>&1 || { status=1; echo "FAILED: lmdeq bench $*"; tail -20 "$OUT_DIR/$log"; }
}

step build
if ! timeout 300 $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT_DIR/build.log" 2>&1; then
  echo "pip install failed (tail of $OUT_DIR/build.log):"; tail -30 "$OUT_DIR/build.log"
  echo "falling back to an in-place build"
  $PY setup.py build_ext --inplace >>"$OUT_DIR/build.log" 2>&1 || { tail -30 "$OUT_DIR/build.log"; exit 1; }
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
tail -2 "$OUT_DIR/build.log"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-420} ))
$PY -m lmdeq.info || status=1

step "speed-up benchmark"
bench 120 speedup.log

step "GPU tests"
timeout "$(limit 150)" $PY -m pytest -m gpu tests/ops tests/deq tests/models -q -p no:cacheprovider \
  --junitxml="$OUT_DIR/gpu-tests.xml" 2>&1 | tee "$OUT_DIR/gpu-tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "fast-path variants"
bench 40 speedup-bf16.log --methods lmdeq --bf16 --tag=-bf16
bench 40 speedup-nchw.log --methods lmdeq --no-channels-last --tag=-nchw
bench 40 speedup-checked.log --methods lmdeq --solve-mode checked --no-cuda-graphs --tag=-checked

step "kernel benchmarks"
timeout "$(limit 110)" $PY benchmarks/kernels.py --quick --compile-for large:128 --out "$OUT_DIR" \
  >"$OUT_DIR/bench.log" 2>&1 || { status=1; tail -20 "$OUT_DIR/bench.log"; }

step "summary"
grep -E "passed|failed|error" "$OUT_DIR/gpu-tests.log" | tail -1
for log in speedup.log speedup-bf16.log speedup-nchw.log speedup-checked.log; do
  echo "--- $log"; sed -n '/^| weights/,$p' "$OUT_DIR/$log" | grep -v '^wrote'
done
awk '/^device:/{p=1} p' "$OUT_DIR/bench.log" | grep -E "^device:|^op  |large +(128|1) "
sed -n '/^targets:/,$p' "$OUT_DIR/bench.log"
echo "gpu_check status: $status"
exit $status
