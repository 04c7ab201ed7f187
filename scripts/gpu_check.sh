#!/usr/bin/env bash
# One prepared check for a lent H100/H200 (no network; its python3 has torch, Triton, pytest, nvcc).
#
# Before the call, on the CPU machine: `python scripts/prepare_gpu_carry.py` (a 12,000-image CIFAR-10
# subset in gpu_carry/, git-ignored) and name `gpu_carry` in the device tool's carry. Without it the
# benchmarks use random images and the trained-weight steps are skipped.
#
# Steps, most valuable first (a run cut short still leaves the earlier results in $OUT):
#   1. build lmdeq._C with the CUDA kernels for sm_90 (editable install, no build isolation); `lmdeq info`;
#   2. short training = reduced time-to-accuracy: (c) lmdeq fast path, (b) authors', (a) original (fastest
#      first) trained on the carried subset (same data, seed, schedule), wall-clock to a stated validation
#      accuracy; the runs' checkpoints are the trained weights of step 3;
#   3. the speed-up benchmark (cifar10-large, batch 128), one run on random-init AND trained weights:
#      (a) vs (b) vs (c) (a-priori counts, no host syncs, CUDA-graphed solves);
#   4. the GPU tests: every op on the CUDA and Triton backends against the float64 reference, and the
#      CUDA-graphed solves (deq_solve and the MDEQ model) against the eager solves;
#   5. the kernel benchmarks (quick), which end with a short table and the speed targets;
#   6. where the time goes: one profiled training step per method (solve phases, top operators);
#   7. fast-path variants: bf16 autocast, eager solves (no CUDA graphs; the graphed adjoint re-evaluates
#      f(z*) inside its graph, so graphs win only where launch overhead exceeds one f-evaluation), NCHW
#      instead of channels_last, checked solves without graphs;
#   8. a summary table.
# Logs and results go to $OUT when set (the device tool), else to benchmarks/results/.
# Budget: every step has its own cap, and all share TOTAL_S (default 570 s) counted from the script's
# start, so the whole script fits in the device tool's 10 minutes per call.
# Knobs (for a CPU smoke run of this script's plumbing): PYTHON, SKIP_BUILD=1, BENCH_ARGS, TTA_ARGS,
# KERNEL_ARGS (appended to the respective commands), PYTEST_ARGS (replaces the GPU test selection).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
DATA=gpu_carry/cifar10-subset.tar.gz
RUNS=${RUNS_DIR:-/tmp/lmdeq-runs}
mkdir -p "$OUT_DIR"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1 LMDEQ_CACHE=${LMDEQ_CACHE:-/tmp/lmdeq-cache}
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-570} ))
status=0
read -r -a BENCH_EXTRA <<<"${BENCH_ARGS:-}"
read -r -a TTA_EXTRA <<<"${TTA_ARGS:-}"
read -r -a KERNEL_EXTRA <<<"${KERNEL_ARGS:-}"
step() { echo; echo "=== $* ($(date +%T), $((DEADLINE - $(date +%s))) s left)"; }
# limit N: N seconds, or what is left of the budget if less (at least 5)
limit() { local left=$((DEADLINE - $(date +%s))); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
bench() {  # bench SECONDS LOG ARGS...: one `lmdeq bench` run, logged
  local secs=$1 log=$2; shift 2
  timeout "$(limit "$secs")" $PY -m lmdeq.cli bench --steps 5 --warmup 2 --out "$OUT_DIR" "$@" "${BENCH_EXTRA[@]}" \
    >"$OUT_DIR/$log" 2>&1 || { status=1; echo "FAILED: lmdeq bench $*"; tail -20 "$OUT_DIR/$log"; }
}

step build
inplace_build() {  # the extension built into the source tree; kernels/ linked as lmdeq/kernels (as installed)
  timeout "$(limit 240)" $PY setup.py build_ext --inplace >>"$OUT_DIR/build.log" 2>&1 || { tail -30 "$OUT_DIR/build.log"; exit 1; }
  ln -sfn ../kernels lmdeq/kernels
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  tail -2 "$OUT_DIR/build.log"
}
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  echo "SKIP_BUILD=1: using the installed lmdeq"
elif ! $PY -c "import os, sysconfig, sys; sys.exit(not os.access(sysconfig.get_paths()['purelib'], os.W_OK))"; then
  echo "site-packages not writable: in-place build"
  inplace_build
elif ! timeout "$(limit 240)" $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT_DIR/build.log" 2>&1; then
  echo "pip install failed (tail of $OUT_DIR/build.log):"; tail -30 "$OUT_DIR/build.log"
  echo "falling back to an in-place build"
  inplace_build
else
  tail -2 "$OUT_DIR/build.log"
fi
$PY -m lmdeq.info || status=1

WEIGHTS=()
if [ -f "$DATA" ]; then
  step "short training: reduced time-to-accuracy on the carried subset"
  rm -rf "$RUNS"
  timeout "$(limit 150)" $PY benchmarks/time_to_accuracy.py --data "$DATA" --target 0.40 --epochs 2 \
    --methods lmdeq,authors,original --val-fraction 0.1 --no-progress --out "$OUT_DIR" --save-runs "$RUNS" \
    --tag=-subset "${TTA_EXTRA[@]}" >"$OUT_DIR/time_to_accuracy.log" 2>&1 \
    || { status=1; echo "FAILED: time_to_accuracy"; tail -20 "$OUT_DIR/time_to_accuracy.log"; }
  for run in lmdeq original; do  # the trained weights: certified Lipschitz for (b) and (c), original for (a)
    [ -f "$RUNS/$run/last.pt" ] || continue
    WEIGHTS+=(--weights "$RUNS/$run/last.pt")
    cp "$RUNS/$run/metrics.jsonl" "$OUT_DIR/train-$run.jsonl"
  done
  BENCH_DATA=(--data "$DATA")
else
  echo "no $DATA (run scripts/prepare_gpu_carry.py and carry gpu_carry): random images, no trained weights"
  BENCH_DATA=()
fi

step "speed-up benchmark (init${WEIGHTS[*]:+ and trained} weights)"
bench 150 speedup.log "${BENCH_DATA[@]}" "${WEIGHTS[@]}"

step "GPU tests"
read -r -a TESTS <<<"${PYTEST_ARGS:--m gpu tests/ops tests/deq tests/models}"
timeout "$(limit 120)" $PY -m pytest "${TESTS[@]}" -q -p no:cacheprovider \
  --junitxml="$OUT_DIR/gpu-tests.xml" >"$OUT_DIR/gpu-tests.log" 2>&1 || status=1
tail -15 "$OUT_DIR/gpu-tests.log"

step "kernel benchmarks"
timeout "$(limit 100)" $PY benchmarks/kernels.py --quick --compile-for large:128 --out "$OUT_DIR" "${KERNEL_EXTRA[@]}" \
  >"$OUT_DIR/bench.log" 2>&1 || { status=1; tail -20 "$OUT_DIR/bench.log"; }

step "profile: where the time goes"
bench 60 speedup-profile.log --profile --steps 1 --tag=-profile "${BENCH_DATA[@]}"

step "fast-path variants"
bench 40 speedup-bf16.log --methods lmdeq --bf16 --tag=-bf16 "${BENCH_DATA[@]}"
bench 40 speedup-eager.log --methods lmdeq --no-cuda-graphs --tag=-eager "${BENCH_DATA[@]}"
bench 40 speedup-nchw.log --methods lmdeq --no-channels-last --tag=-nchw "${BENCH_DATA[@]}"
bench 40 speedup-checked.log --methods lmdeq --solve-mode checked --no-cuda-graphs --tag=-checked "${BENCH_DATA[@]}"

step "summary"
[ -f "$OUT_DIR/time_to_accuracy.log" ] && sed -n '/^Device:/,/^wrote/p' "$OUT_DIR/time_to_accuracy.log" | grep -v '^wrote'
grep -E "passed|failed|error" "$OUT_DIR/gpu-tests.log" | tail -1
for log in speedup.log speedup-bf16.log speedup-eager.log speedup-nchw.log speedup-checked.log; do
  echo "--- $log"; sed -n '/^| weights/,$p' "$OUT_DIR/$log" | grep -v '^wrote'
done
echo "--- speedup-profile.log"; sed -n '/^One profiled/,$p' "$OUT_DIR/speedup-profile.log" | grep -v '^wrote'
awk '/^device:/{p=1} p' "$OUT_DIR/bench.log" | grep -E "^device:|^op  |large +(128|1) "
sed -n '/^targets:/,$p' "$OUT_DIR/bench.log"
echo "gpu_check status: $status ($((DEADLINE - $(date +%s))) s of the budget left)"
exit $status
