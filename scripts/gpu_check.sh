#!/usr/bin/env bash
# The GPU check: one prepared run for a lent H100/H200, in one device call of at most 10 minutes (the
# machine has no network; its python3 has torch, Triton, pytest, pytest-timeout and nvcc).
#
#   scripts/gpu_check.sh --plan    the steps in order, each with its time cap, and the total against the budget
#   scripts/gpu_check.sh           run them (on the GPU machine: device tool, timeout_s=600)
#   scripts/gpu_check.sh --smoke   the whole script on a CPU machine, in well under a minute: tiny sizes; the
#                                  GPU tests collected and the GPU-only commands argument-checked
#                                  (scripts/check_args.py) instead of run. tests/bench/test_gpu_check.py runs it,
#                                  so that a typo fails CI instead of wasting the GPU window.
#
# Before the call, on the CPU machine: `python scripts/prepare_gpu_carry.py` (a 12,000-image CIFAR-10 subset in
# gpu_carry/, git-ignored) and name `gpu_carry` in the device tool's carry; without it there are random images
# and no trained weights.
#
# The plan, most valuable first (--plan prints it with the caps): build lmdeq._C for this GPU (on a compile
# error once more with LMDEQ_BUILD_CUDA=0, so that the Triton kernels and the rest still run) and `lmdeq info`;
# the `gpu`-marked tests in four groups, each its own process (the kernels have never run on a GPU: a crash or
# a hang costs one group, and each test has its own timeout); a short training of (c) and (a) on the carried
# subset (its checkpoints are the trained weights); the speed-up benchmark on init and trained weights; the
# kernel benchmark. Then, each only if its whole cap is still left: where the time goes (profile) and the
# fast-path variants (bf16, eager solves, NCHW, checked solves).
#
# Budget: TOTAL_S (570 s) from the start. Every step runs under `timeout` with its cap; the caps of the plan,
# plus a reserve for packing and the kill slack of each step, add up to at most TOTAL_S (checked before
# anything runs: a plan over budget is refused). No step gets more than its cap or starts past the deadline.
#
# Output: everything goes to one work folder (WORK_DIR, default /tmp/lmdeq-gpu-check: logs/, results/), packed
# after every step into $OUT/gpu-check.tar.gz, with $OUT/summary.txt (per-step status and the key results,
# also printed last): two files, within the device tool's 8. Without $OUT: benchmarks/results/gpu-check/.
# Checkpoints and the dataset cache stay outside (RUNS_DIR, LMDEQ_CACHE): they would not fit.
#
# Knobs: PYTHON (python3), TOTAL_S, ARCH_LIST (TORCH_CUDA_ARCH_LIST to build for; default: the GPU's own, an
# inherited multi-arch TORCH_CUDA_ARCH_LIST is ignored: compile time), SKIP_BUILD=1 (the default of --smoke;
# SKIP_BUILD=0 builds there too), DATA (the carried
# archive), TEST_TIMEOUT (s per test, 25), CAP_<step> (one step's cap), BENCH_ARGS, TTA_ARGS, KERNEL_ARGS
# (appended to those commands).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=run
case "${1:-}" in
  --plan) MODE=plan ;;
  --smoke) MODE=smoke ;;
  "") ;;
  *) echo "usage: scripts/gpu_check.sh [--plan | --smoke]" >&2; exit 2 ;;
esac

TOTAL_S=${TOTAL_S:-570}
KILL_S=2       # `timeout -k`: a step that ignores TERM is killed this long after its cap
PACK_S=15      # kept for packing after each step and for the last summary and archive
# step | cap (s) | what; then the optional steps, each run only if its whole cap is left.
PLAN=(
  "build|190|lmdeq._C for this GPU (in place); on a compile error once more with LMDEQ_BUILD_CUDA=0"
  "info|10|lmdeq info: versions, build, the backend each op runs on"
  "tests-fixed-point|35|pytest -m gpu: fused fixed-point update, CUDA and Triton, vs float64 (cold Triton JIT)"
  "tests-anderson|40|pytest -m gpu: Anderson Gram row and mixing (+ rows past int32 offsets)"
  "tests-power-iteration|30|pytest -m gpu: matrix and conv power iteration, with and without CUDA graphs"
  "tests-graphs|40|pytest -m gpu: CUDA-graphed solves (deq_solve, MDEQ) vs eager, failed-capture clean-up"
  "train|60|short training of (c) and (a) on the carried subset: the trained weights (reduced time to accuracy)"
  "speedup|90|lmdeq bench, cifar10-large batch 128: (a) vs (b) vs (c) on init and trained weights"
  "kernels|40|benchmarks/kernels.py --quick: fused kernels vs eager / torch.compile"
)
OPTIONAL=(
  "profile|60|lmdeq bench --profile: where each method's training step spends its time"
  "bf16|40|fast path with bf16 autocast"
  "eager|40|fast path, a-priori counts without CUDA graphs (what the graphs buy)"
  "nchw|40|fast path in NCHW instead of channels_last"
  "checked|40|fast path with checked solves (convergence read-backs), no graphs"
)
# Triton JIT: a cold cache compiles every kernel variant the GPU tests launch (of the order of the ~210 that CI's
# sm_90 compile check compiles, tests/ops/test_triton_hopper_compile.py; ~0.2 s each), inside the test groups' caps.

cap_of() {  # cap_of NAME DEFAULT: CAP_<name> (dashes as underscores) overrides the plan's cap
  local var="CAP_${1//-/_}"
  echo "${!var:-$2}"
}
STEPS=() CAPS=() WHATS=() KINDS=()
for entry in "${PLAN[@]}" "${OPTIONAL[@]}"; do
  IFS='|' read -r name cap what <<<"$entry"
  STEPS+=("$name") CAPS+=("$(cap_of "$name" "$cap")") WHATS+=("$what")
done
for _ in "${PLAN[@]}"; do KINDS+=(planned); done
for _ in "${OPTIONAL[@]}"; do KINDS+=(optional); done
PLANNED_TOTAL=0
for i in "${!STEPS[@]}"; do [ "${KINDS[$i]}" = planned ] && PLANNED_TOTAL=$((PLANNED_TOTAL + CAPS[i])); done
RESERVE=$((PACK_S + KILL_S * ${#PLAN[@]}))
AVAILABLE=$((TOTAL_S - RESERVE))

print_plan() {
  echo "gpu_check plan: budget TOTAL_S=${TOTAL_S} s, of which ${RESERVE} s are kept (${PACK_S} s for the summary and archive,"
  echo "${KILL_S} s of kill slack per planned step); the planned caps must add up to at most ${AVAILABLE} s"
  printf '%3s  %-22s %6s  %s\n' "#" step "cap s" what
  local i
  for i in "${!STEPS[@]}"; do
    if [ "${KINDS[$i]}" = optional ] && [ "${KINDS[$((i - 1))]}" = planned ]; then
      printf '     %-22s %6s  %s\n' "planned total" "$PLANNED_TOTAL" "<= ${AVAILABLE}: $([ "$PLANNED_TOTAL" -le "$AVAILABLE" ] && echo fits || echo OVER BUDGET)"
      echo "then, in order, each only if its whole cap is still left:"
    fi
    printf '%3d  %-22s %6d  %s\n' "$((i + 1))" "${STEPS[$i]}" "${CAPS[$i]}" "${WHATS[$i]}"
  done
  echo "(the test groups' caps include the cold Triton JIT: of the order of the ~210 kernel variants that CI's sm_90"
  echo " compile check compiles, ~0.2 s each, ~45 s in all; the build's cap keeps 45 s for the LMDEQ_BUILD_CUDA=0 retry)"
}

if [ "$MODE" = plan ]; then
  print_plan
  [ "$PLANNED_TOTAL" -le "$AVAILABLE" ]
  exit $?
fi
if [ "$PLANNED_TOTAL" -gt "$AVAILABLE" ]; then
  print_plan
  echo "gpu_check: the plan (${PLANNED_TOTAL} s) does not fit the budget (${AVAILABLE} s): nothing run" >&2
  exit 2
fi

# ---- set-up ------------------------------------------------------------------------------------------------
START=$(date +%s)
DEADLINE=$((START + TOTAL_S - PACK_S))
PY=${PYTHON:-python3}
WORK=${WORK_DIR:-/tmp/lmdeq-gpu-check}
FINAL=${OUT:-$ROOT/benchmarks/results/gpu-check}
RUNS=${RUNS_DIR:-/tmp/lmdeq-runs}
DATA=${DATA:-gpu_carry/cifar10-subset.tar.gz}
LOGS=$WORK/logs RESULTS=$WORK/results QUEUE=$WORK/logs/argcheck.queue
rm -rf "$WORK" "$RUNS"
mkdir -p "$LOGS" "$RESULTS" "$FINAL"
export PYTHONUNBUFFERED=1 LMDEQ_CACHE=${LMDEQ_CACHE:-/tmp/lmdeq-cache} MAX_JOBS=${MAX_JOBS:-$(nproc)}
read -r -a BENCH_EXTRA <<<"${BENCH_ARGS:-}"
read -r -a TTA_EXTRA <<<"${TTA_ARGS:-}"
read -r -a KERNEL_EXTRA <<<"${KERNEL_ARGS:-}"
SMOKE=0
if [ "$MODE" = smoke ]; then
  SMOKE=1
  BENCH_EXTRA+=(--quick --device cpu --batch 2 --steps 1 --warmup 0 --methods lmdeq)
  TTA_EXTRA+=(--device cpu --preset cifar10-small --batch 4 --limit-train 8 --limit-val 4 --methods lmdeq)
fi
STATUS=() USED=()
WEIGHTS=() BENCH_DATA=()
[ -e "$DATA" ] && BENCH_DATA=(--data "$DATA")

now() { date +%s; }
step_left() { echo $((STEP_END - $(now))); }
capped() {  # capped CMD...: CMD under what is left of the running step's cap
  local left
  left=$(step_left)
  [ "$left" -gt 0 ] || return 124
  timeout -k "$KILL_S" "$left" "$@"
}
capped_keeping() {  # capped_keeping SECONDS CMD...: as capped, leaving SECONDS of the step for what follows
  local keep=$1 left
  shift
  left=$(($(step_left) - keep))
  [ "$left" -gt 0 ] || return 124
  timeout -k "$KILL_S" "$left" "$@"
}
pycmd() {  # pycmd ARGS...: run python ARGS under the step's cap (smoke, with ARGCHECK=1: queue it instead)
  if [ "$SMOKE" = 1 ] && [ "${ARGCHECK:-0}" = 1 ]; then
    { printf '%s\t' "$CURRENT_STEP"; printf '%q ' "$@"; echo; } >>"$QUEUE"
    echo "queued for the argument check: python $*"
    return 75  # (a status no command here returns: "queued")
  fi
  capped $PY "$@"
}
bench() {  # bench ARGS...: one `lmdeq bench` run with the common settings
  pycmd -m lmdeq.cli bench --steps 5 --warmup 2 --out "$RESULTS" "$@" "${BENCH_EXTRA[@]}"
}

# ---- steps -------------------------------------------------------------------------------------------------
step_build() {
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  if [ "${SKIP_BUILD:-$SMOKE}" = 1 ]; then  # (the smoke run builds only when asked: SKIP_BUILD=0)
    echo "SKIP_BUILD=1: using the lmdeq._C already in the tree"
    return 0
  fi
  local nvcc=${CUDA_HOME:+$CUDA_HOME/bin/nvcc}
  [ -n "$nvcc" ] && [ -x "$nvcc" ] || nvcc=$(command -v nvcc || true)
  [ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; }
  echo "nvcc: ${nvcc:-not found (CPU kernels only)}"
  if [ -n "${ARCH_LIST:-}" ]; then
    export TORCH_CUDA_ARCH_LIST=$ARCH_LIST
  elif [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    echo "ignoring the inherited TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (compile time): building for the GPU" \
         "present (ARCH_LIST=... to choose)"
    unset TORCH_CUDA_ARCH_LIST
  fi
  if capped_keeping 45 $PY setup.py build_ext --inplace >"$LOGS/build-cuda.log" 2>&1; then
    tail -2 "$LOGS/build-cuda.log"
    cp lmdeq/_build_info.json "$RESULTS/build_info.json" 2>/dev/null
    return 0
  fi
  echo "CUDA build failed (tail of logs/build-cuda.log):"
  tail -15 "$LOGS/build-cuda.log"
  echo "retrying once with LMDEQ_BUILD_CUDA=0: C++ CPU kernels, Triton on the GPU"
  LMDEQ_BUILD_CUDA=0 capped $PY setup.py build_ext --inplace >"$LOGS/build-cpu.log" 2>&1 \
    || { tail -15 "$LOGS/build-cpu.log"; return 1; }
  cp lmdeq/_build_info.json "$RESULTS/build_info.json" 2>/dev/null
  return 73  # built, but not as planned
}
step_info() { pycmd -m lmdeq.info; }
gpu_tests() {  # gpu_tests NAME PYTEST-ARGS...: one group of the `gpu` tests in its own process
  local name=$1 timeout_args=()
  shift
  if [ "$SMOKE" = 1 ]; then  # no GPU here: the selection must exist (collected), nothing runs
    ARGCHECK=1 pycmd -m pytest -m gpu "$@" --collect-only -q -p no:cacheprovider
    return
  fi
  $PY -c "import pytest_timeout" 2>/dev/null && timeout_args=(--timeout="${TEST_TIMEOUT:-25}")
  pycmd -m pytest -m gpu "$@" -v -rA -p no:cacheprovider "${timeout_args[@]}" --junitxml="$RESULTS/$name.xml" \
    >"$LOGS/$name-pytest.log" 2>&1
  local rc=$? closing
  closing=$(grep -E "^=+ .+ in [0-9.]+s" "$LOGS/$name-pytest.log" | tail -1)  # pytest's closing line
  echo "$closing"
  if [ "$rc" = 0 ] && ! grep -qE "[0-9]+ passed" <<<"$closing"; then
    echo "no test passed: is the GPU visible to torch? (see logs/info.log)"
    return 1
  fi
  return $rc
}
step_tests_fixed_point() { gpu_tests tests-fixed-point tests/ops/test_gpu.py -k fixed_point; }
step_tests_anderson() { gpu_tests tests-anderson tests/ops/test_gpu.py -k anderson; }
step_tests_power_iteration() { gpu_tests tests-power-iteration tests/ops/test_gpu.py -k power_iteration; }
step_tests_graphs() {
  gpu_tests tests-graphs tests/deq/test_cuda_graphs.py tests/deq/test_graphed_call.py tests/models/test_cuda_graphs.py
}
step_train() {
  if [ ! -e "$DATA" ]; then
    echo "no $DATA (run scripts/prepare_gpu_carry.py and carry gpu_carry): no trained weights"
    return 74
  fi
  pycmd benchmarks/time_to_accuracy.py --data "$DATA" --protocol gpu --target 0.40 --epochs 1 \
    --methods lmdeq,original --variants '' --evals-per-epoch 2 --val-fraction 0.1 --no-progress --out "$RESULTS" \
    --save-runs "$RUNS" --tag=-subset "${TTA_EXTRA[@]}"
  local rc=$? run
  for run in lmdeq original; do  # the trained weights: certified Lipschitz for (b) and (c), original for (a)
    [ -f "$RUNS/$run/last.pt" ] || continue
    WEIGHTS+=(--weights "$RUNS/$run/last.pt")
    cp "$RUNS/$run/metrics.jsonl" "$RESULTS/train-$run.jsonl" 2>/dev/null
  done
  echo "trained weights: ${WEIGHTS[*]:-none}"
  return $rc
}
step_speedup() { bench "${BENCH_DATA[@]}" "${WEIGHTS[@]}"; }
step_kernels() {
  ARGCHECK=1 pycmd benchmarks/kernels.py --quick --compile-for large:128 --out "$RESULTS" "${KERNEL_EXTRA[@]}"
}
step_profile() { ARGCHECK=1 bench --profile --steps 1 --tag=-profile "${BENCH_DATA[@]}"; }
step_bf16() { ARGCHECK=1 bench --methods lmdeq --bf16 --tag=-bf16 "${BENCH_DATA[@]}"; }
step_eager() { ARGCHECK=1 bench --methods lmdeq --no-cuda-graphs --tag=-eager "${BENCH_DATA[@]}"; }
step_nchw() { ARGCHECK=1 bench --methods lmdeq --no-channels-last --tag=-nchw "${BENCH_DATA[@]}"; }
step_checked() { ARGCHECK=1 bench --methods lmdeq --solve-mode checked --no-cuda-graphs --tag=-checked "${BENCH_DATA[@]}"; }

# ---- bookkeeping -------------------------------------------------------------------------------------------
describe() {  # describe RC: a step's status word
  case $1 in
    0) echo ok ;; 124 | 137) echo "FAILED (timeout)" ;;
    73) echo "FAILED (CUDA build; built with LMDEQ_BUILD_CUDA=0)" ;; 74) echo "skipped (no data)" ;;
    75) echo "queued (smoke)" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}
write_summary() {
  local f=$WORK/summary.txt i
  {
    echo "gpu_check ($MODE) on $(uname -n), $(date -u +%FT%TZ); budget ${TOTAL_S} s, used $(($(now) - START)) s"
    printf '%-22s %6s %6s  %s\n' step cap used status
    for i in "${!STEPS[@]}"; do
      printf '%-22s %6s %6s  %s\n' "${STEPS[$i]}" "${CAPS[$i]}" "${USED[$i]:--}" "${STATUS[$i]:-not run}"
    done
    echo
    [ -f "$LOGS/info.log" ] && grep -E "^(torch|triton|extension|  compiled|backends for cuda|  unavailable)" "$LOGS/info.log"
    for log in "$LOGS"/tests-*-pytest.log; do
      [ -f "$log" ] && echo "$(basename "$log" -pytest.log): $(grep -E "^=+ .+ in [0-9.]+s" "$log" | tail -1)"
    done
    [ -f "$LOGS/argcheck.log" ] && grep -E "^selected [0-9]+ tests" "$LOGS/argcheck.log"
    [ -f "$LOGS/train.log" ] && sed -n '/^Device:/,/^wrote/p' "$LOGS/train.log" | grep -v '^wrote'
    for s in speedup profile bf16 eager nchw checked; do
      [ -f "$LOGS/$s.log" ] && grep -q '^| weights' "$LOGS/$s.log" && { echo "--- $s"; sed -n '/^| weights/,$p' "$LOGS/$s.log" | grep -v '^wrote'; }
    done
    [ -f "$LOGS/kernels.log" ] && sed -n '/^targets:/,$p' "$LOGS/kernels.log"
  } >"$f" 2>/dev/null
  cp "$f" "$FINAL/summary.txt"
}
pack() {  # everything in the work folder, as one archive (written aside, then moved: never half-written)
  tar czf "$FINAL/gpu-check.tar.gz.part" -C "$WORK" . 2>/dev/null && mv "$FINAL/gpu-check.tar.gz.part" "$FINAL/gpu-check.tar.gz"
}

run_step() {  # run_step INDEX: the step's function, in this shell, under its cap; output to logs/NAME.log
  local i=$1 name=${STEPS[$1]} cap=${CAPS[$1]} left start rc
  # what is left for this step: the time to the deadline less the kill slack of this and the later planned steps
  left=$((DEADLINE - $(now) - KILL_S * (i < ${#PLAN[@]} ? ${#PLAN[@]} - i : 1)))
  if [ "${KINDS[$i]}" = optional ] && [ "$left" -lt "$cap" ]; then
    STATUS[i]="skipped (${left} s left < cap)"
    return
  fi
  [ "$left" -lt "$cap" ] && cap=$left  # (a planned step always has its cap, unless an earlier one overran)
  if [ "$cap" -le 0 ]; then
    STATUS[i]="skipped (no time left)"
    return
  fi
  echo
  echo "=== ${name}: cap ${cap} s ($(date +%T), $((DEADLINE - $(now))) s left)"
  start=$(now)
  STEP_END=$((start + cap)) CURRENT_STEP=$name
  "step_${name//-/_}" >"$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 12 "$LOGS/$name.log"
  USED[i]=$(($(now) - start))
  STATUS[i]=$(describe "$rc")
  [ "$rc" -eq 0 ] || echo "--- ${name}: ${STATUS[$i]}"
}

print_plan >"$LOGS/plan.txt"
for i in "${!STEPS[@]}"; do
  run_step "$i"
  write_summary
  pack
done

if [ "$SMOKE" = 1 ] && [ -s "$QUEUE" ]; then  # the queued commands' arguments and test selections, one process
  echo
  echo "=== smoke: checking $(wc -l <"$QUEUE") queued command lines"
  STEP_END=$(($(now) + 120))
  capped $PY scripts/check_args.py --queue "$QUEUE" >"$LOGS/argcheck.log" 2>&1
  grep -P "^[a-z0-9-]+\t(ok|FAILED)\t" "$LOGS/argcheck.log" | tee "$LOGS/argcheck.txt"
  for i in "${!STEPS[@]}"; do
    [ "${STATUS[$i]:-}" = "queued (smoke)" ] || continue
    if grep -qP "^${STEPS[$i]}\tFAILED" "$LOGS/argcheck.txt"; then STATUS[i]="FAILED (smoke: arguments or selection)"
    elif grep -qP "^${STEPS[$i]}\tok" "$LOGS/argcheck.txt"; then STATUS[i]="ok (smoke: arguments checked)"
    else STATUS[i]="FAILED (smoke: not checked)"
    fi
  done
  write_summary
  pack
fi

echo
cat "$FINAL/summary.txt"
failed=0
for i in "${!STEPS[@]}"; do
  case "${STATUS[$i]:-}" in ok* | skipped*) ;; *) failed=1 ;; esac
done
echo "gpu_check: $([ "$failed" = 0 ] && echo "every step ok" || echo "some steps failed"); results in $FINAL" \
  "(gpu-check.tar.gz, summary.txt)"
exit "$failed"
