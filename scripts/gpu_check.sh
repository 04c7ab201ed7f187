#!/usr/bin/env bash
# One prepared check for a lent H100/H200 (no network; its python3 has torch, Triton, pytest, nvcc).
#   1. build lmdeq._C with the CUDA kernels for sm_90 (editable install, no build isolation);
#   2. `lmdeq info`: versions, build, backend per op;
#   3. the GPU tests: every op on the CUDA and Triton backends against the float64 reference, and the
#      CUDA-graphed solves (deq_solve and the MDEQ model) against the eager solves;
#   4. the kernel benchmarks (quick), which end with a short table and the speed targets;
#   5. the speed-up benchmark (cifar10-large, batch 128): original MDEQ vs authors' vs lmdeq fast path
#      (a-priori counts + CUDA graphs), then the fast path alone with bf16 autocast and channels_last.
# Logs and results go to $OUT when set (the device tool), else to benchmarks/results/.
# Budget: every step has its own timeout; all together < 9 min (the device tool allows 10 per call).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step build
if ! timeout 300 $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT_DIR/build.log" 2>&1; then
  echo "pip install failed (tail of $OUT_DIR/build.log):"; tail -30 "$OUT_DIR/build.log"
  echo "falling back to an in-place build"
  $PY setup.py build_ext --inplace >>"$OUT_DIR/build.log" 2>&1 || { tail -30 "$OUT_DIR/build.log"; exit 1; }
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
tail -2 "$OUT_DIR/build.log"

step "lmdeq info"
$PY -m lmdeq.info || status=1

step "GPU tests"
timeout 170 $PY -m pytest -m gpu tests/ops tests/deq tests/models -q -p no:cacheprovider --junitxml="$OUT_DIR/gpu-tests.xml" \
  2>&1 | tee "$OUT_DIR/gpu-tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "kernel benchmarks"
timeout 150 $PY benchmarks/kernels.py --quick --compile-for large:128 --out "$OUT_DIR" \
  >"$OUT_DIR/bench.log" 2>&1 || { status=1; tail -20 "$OUT_DIR/bench.log"; }

step "speed-up benchmark"
timeout 120 $PY -m lmdeq.cli bench --steps 5 --warmup 2 --out "$OUT_DIR" \
  >"$OUT_DIR/speedup.log" 2>&1 || { status=1; tail -20 "$OUT_DIR/speedup.log"; }
timeout 45 $PY -m lmdeq.cli bench --steps 5 --warmup 2 --methods lmdeq --bf16 --channels-last --tag=-bf16-cl \
  --out "$OUT_DIR" >"$OUT_DIR/speedup-bf16.log" 2>&1 || { status=1; tail -20 "$OUT_DIR/speedup-bf16.log"; }

step "summary"
grep -E "passed|failed|error" "$OUT_DIR/gpu-tests.log" | tail -1
awk '/^device:/{p=1} p' "$OUT_DIR/bench.log" | grep -E "^device:|^op  |large +(128|1) "
sed -n '/^targets:/,$p' "$OUT_DIR/bench.log"
sed -n '/^| weights/,$p' "$OUT_DIR/speedup.log" | grep -v '^wrote'
sed -n '/^| weights/,$p' "$OUT_DIR/speedup-bf16.log" | grep -v '^wrote'
echo "gpu_check status: $status"
exit $status
