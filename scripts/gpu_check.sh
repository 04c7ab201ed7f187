#!/usr/bin/env bash
# The GPU check: one prepared run for a lent H100/H200, in one device call of at most 10 minutes (the
# machine has no network; its python3 has torch, Triton, pytest, pytest-timeout and nvcc).
#
#   scripts/gpu_check.sh --plan    the steps in order, each with its time cap, and the total against the budget
#   scripts/gpu_check.sh           run them (on the GPU machine: device tool, timeout_s=600)
#   scripts/gpu_check.sh --smoke   the whole script on a CPU machine, in about a minute: tiny sizes; the
#                                  GPU tests collected and the GPU-only commands argument-checked
#                                  (scripts/check_args.py) instead of run. tests/bench/test_gpu_check.py runs it,
#                                  so that a typo fails CI instead of wasting the GPU window.
#
# Before the call, on the CPU machine: `python scripts/prepare_gpu_carry.py` (a 12,000-image CIFAR-10 subset in
# gpu_carry/, git-ignored) and name `gpu_carry` in the device tool's carry; without it there are random images
# and no trained weights.
#
# The plan, most valuable first (--plan prints it with the caps): build lmdeq._C for this GPU (with ninja, else
# without CUDA: a serial nvcc build would not fit; on a compile error once more with LMDEQ_BUILD_CUDA=0) while the
# Triton half of the op tests runs beside it (the GPU is idle while nvcc compiles, and the cold Triton JIT is
# paid there); `lmdeq info`; the rest of the `gpu`-marked tests in four groups, each its own process (the kernels
# have never run on a GPU: a crash or a hang costs one group, and each test has its own timeout); a short
# training of (c) and (a) on the carried subset (its checkpoints, saved every round, are the trained weights);
# the speed-up benchmark on init and trained weights; the kernel benchmark (headline cases first). Then, each
# only if its whole cap is still left: the torch.compile baselines, where the time goes (profile) and the
# fast-path variants (bf16, eager solves, NCHW, checked solves).
#
# What the GPU tests found decides how the benchmark steps run: a backend whose tests failed (wrong numbers, or an
# illegal memory access that would kill every later step) is left out (LMDEQ_BACKEND=triton when the CUDA kernels
# failed; the kernel benchmark's --skip-backends), and failed CUDA-graph tests turn graphs off
# (LMDEQ_CUDA_GRAPHS=0); summary.txt says so.
#
# Budget: TOTAL_S (570 s) from the start. Every step runs under `timeout`; the caps of the plan, plus a reserve for
# packing and the kill slack of each step, add up to at most TOTAL_S (checked before anything runs: a plan over
# budget is refused). A planned step may run up to twice its cap on time the earlier steps left unused (never on
# what the later planned steps are owed: they always get their caps); the optional steps get what is left after
# that. Nothing starts past the deadline.
#
# Output: everything goes to one work folder (WORK_DIR, default /tmp/lmdeq-gpu-check: logs/, results/), packed
# after every step into $OUT/gpu-check.tar.gz, with $OUT/summary.txt (per-step status and the key results,
# also printed last): two files, within the device tool's 8. Without $OUT: a new run folder outside the checkout,
# ${LMDEQ_RUNS:-~/.cache/lmdeq/bench}/gpu-check-<timestamp>/, as every benchmark's default (lmdeq/app/bench/outputs.py).
# Every benchmark step passes --out "$RESULTS" (the work folder, emptied first), so nothing lands in the checkout.
# Checkpoints and the dataset cache stay outside (RUNS_DIR, LMDEQ_CACHE): they would not fit. Results are written
# as they come (the kernel benchmark after every case, the training after every round), so a step stopped at its
# cap still leaves what it measured.
#
# Knobs: PYTHON (python3), TOTAL_S, ARCH_LIST (TORCH_CUDA_ARCH_LIST to build for; default: the GPU's own, an
# inherited multi-arch TORCH_CUDA_ARCH_LIST is ignored: compile time), SKIP_BUILD=1 (the default of --smoke;
# SKIP_BUILD=0 builds there too), DATA (the carried archive), TEST_TIMEOUT (s per test, 25), CAP_<step> (one
# step's cap), BENCH_ARGS, TTA_ARGS, KERNEL_ARGS (appended to those commands).
# Smoke-only failure knobs (ignored outside --smoke), so that the CPU run walks every failure path:
#   SIMULATE_TIMEOUT="STEP ..." | all   those steps hang until their cap stops them (train and kernels after
#                                       writing their first results: LMDEQ_HANG_AT, lmdeq/app/faults.py; the build
#                                       in its CUDA part, so that the retry without CUDA runs)
#   SIMULATE_FAILED_TEST="GROUP[:crash] ..."  that test group runs a stand-in whose CUDA test fails (or crashes the
#                                       process, as an illegal memory access does)
#   SIMULATE_NO_NINJA=1                 the build finds no ninja
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
# step | cap (s) | what. The planned steps, most valuable first:
PLAN=(
  "build|170|lmdeq._C for this GPU (in place, needs ninja); on a compile error once more with LMDEQ_BUILD_CUDA=0"
  "info|20|lmdeq info: versions, build, the backend each op runs on (and the first CUDA start-up)"
  "tests-fixed-point|30|pytest -m gpu: fused fixed-point update on CUDA (Triton too if tests-triton did not finish)"
  "tests-anderson|30|pytest -m gpu: Anderson Gram row and mixing (+ rows past int32 offsets)"
  "tests-power-iteration|25|pytest -m gpu: matrix and conv power iteration, with and without CUDA graphs"
  "tests-graphs|40|pytest -m gpu: CUDA-graphed solves (deq_solve, MDEQ) vs eager, failed-capture clean-up"
  "train|60|(c) and (a) on 9,984 carried images, a time budget, checkpoints every round: the trained weights"
  "speedup|110|lmdeq bench, cifar10-large batch 128: (a), (a)+JR (where METHODS has it), (b), (c); init + trained"
  "kernels|40|benchmarks/kernels.py --quick, headline cases first, results after each case; no torch.compile"
)
# Beside the build, in its time (no cap of its own): the GPU is idle while nvcc compiles.
DURING_BUILD=(
  "tests-triton|beside the build, in its time: pytest -m gpu -k triton, the Triton half of the op tests (cold JIT)"
)
# Then, in order, each only if its whole cap is left.
OPTIONAL=(
  "kernels-compile|40|benchmarks/kernels.py: the torch.compile baselines of MDEQ-large B=128 (cold compiles)"
  "profile|60|lmdeq bench --profile: where each method's training step spends its time"
  "bf16|40|fast path with bf16 autocast"
  "eager|40|fast path, a-priori counts without CUDA graphs (what the graphs buy)"
  "nchw|40|fast path in NCHW instead of channels_last"
  "checked|40|fast path with checked solves (convergence read-backs), no graphs"
)
TRAIN_IMAGES=9984    # 78 batches of 128: no partial last batch (one more shape to autotune and capture)
VAL_IMAGES=1024      # 4 evaluation batches of 256 (TrainConfig.eval_batch_size): one shape
TRAIN_SETUP_S=24     # of the training's cap: data, model builds, autotuning, graph captures, evaluations, saving

cap_of() {  # cap_of NAME DEFAULT: CAP_<name> (dashes as underscores) overrides the plan's cap
  local var="CAP_${1//-/_}"
  echo "${!var:-$2}"
}
STEPS=() CAPS=() WHATS=() KINDS=()
add_steps() {  # add_steps KIND ENTRY...: the plan's table as arrays (a during-build entry has no cap)
  local kind=$1 entry name cap what
  shift
  for entry in "$@"; do
    if [ "$kind" = during-build ]; then
      IFS='|' read -r name what <<<"$entry"
      cap=0
    else
      IFS='|' read -r name cap what <<<"$entry"
    fi
    STEPS+=("$name") CAPS+=("$(cap_of "$name" "$cap")") WHATS+=("$what") KINDS+=("$kind")
  done
}
add_steps planned "${PLAN[0]}"
add_steps during-build "${DURING_BUILD[@]}"
add_steps planned "${PLAN[@]:1}"
add_steps optional "${OPTIONAL[@]}"
PLANNED_TOTAL=0
for i in "${!STEPS[@]}"; do [ "${KINDS[$i]}" = planned ] && PLANNED_TOTAL=$((PLANNED_TOTAL + CAPS[i])); done
RESERVE=$((PACK_S + KILL_S * ${#PLAN[@]}))
AVAILABLE=$((TOTAL_S - RESERVE))

index_of() {  # index_of NAME: the step's index in STEPS
  local i
  for i in "${!STEPS[@]}"; do [ "${STEPS[$i]}" = "$1" ] && { echo "$i"; return; }; done
  return 1
}

print_plan() {
  echo "gpu_check plan: budget TOTAL_S=${TOTAL_S} s, of which ${RESERVE} s are kept (${PACK_S} s for the summary and archive,"
  echo "${KILL_S} s of kill slack per planned step); the planned caps must add up to at most ${AVAILABLE} s"
  printf '%3s  %-22s %6s  %s\n' "#" step "cap s" what
  local i n=0
  for i in "${!STEPS[@]}"; do
    if [ "${KINDS[$i]}" = optional ] && [ "${KINDS[$((i - 1))]}" != optional ]; then
      printf '     %-22s %6s  %s\n' "planned total" "$PLANNED_TOTAL" "<= ${AVAILABLE}: $([ "$PLANNED_TOTAL" -le "$AVAILABLE" ] && echo fits || echo OVER BUDGET)"
      echo "then, in order, each only if its whole cap is still left:"
    fi
    if [ "${KINDS[$i]}" = during-build ]; then
      printf '  +  %-22s %6s  %s\n' "${STEPS[$i]}" - "${WHATS[$i]}"
    else
      n=$((n + 1))
      printf '%3d  %-22s %6d  %s\n' "$n" "${STEPS[$i]}" "${CAPS[$i]}" "${WHATS[$i]}"
    fi
  done
  echo "(a planned step may run up to twice its cap on time the earlier steps left unused, never on the later planned"
  echo " steps' caps; the build keeps up to 45 s of its cap for the LMDEQ_BUILD_CUDA=0 retry; the Triton JIT, ~210"
  echo " kernel variants at ~0.2 s, is paid by tests-triton during the build, else by the test groups)"
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
FINAL=${OUT:-${LMDEQ_RUNS:-${HOME:-/tmp}/.cache/lmdeq/bench}/gpu-check-$(date +%Y%m%d-%H%M%S)}
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
  KERNEL_EXTRA+=(--device cpu --rounds 1 --cases small:2 --skip-backends triton)  # (Triton: the slow interpreter)
else
  SIMULATE_TIMEOUT="" SIMULATE_FAILED_TEST="" SIMULATE_NO_NINJA=0  # (never on the GPU machine)
fi
# Where a simulated timeout hangs a step that writes results as it goes: after its first results.
declare -A HANG_POINTS=([train]=last.pt:renamed [kernels]=kernels:case)
STATUS=() USED=() GIVEN=()
WEIGHTS=() BENCH_DATA=() KERNEL_SKIP=()
STEP_NOTE=""   # a step function's word on its status ("no ninja on PATH", ...), added to the summary
[ -e "$DATA" ] && BENCH_DATA=(--data "$DATA")

now() { date +%s; }
step_left() { echo $((STEP_END - $(now))); }
[ "${SIMULATE_TIMEOUT:-}" = all ] && SIMULATE_TIMEOUT="${STEPS[*]}"
simulating_timeout() {  # smoke: is the running step one that SIMULATE_TIMEOUT hangs?
  [ "$SMOKE" = 1 ] && [[ " ${SIMULATE_TIMEOUT:-} " == *" $CURRENT_STEP "* ]]
}
capped() {  # capped CMD...: CMD under what is left of the running step's cap, less KEEP_S (default 0) kept for later
  local left=$(($(step_left) - ${KEEP_S:-0}))
  [ "$left" -gt 0 ] || return 124
  if simulating_timeout; then
    local point=${HANG_POINTS[$CURRENT_STEP]:-}
    if [ -n "$point" ]; then
      echo "SIMULATE_TIMEOUT: $CURRENT_STEP hangs at LMDEQ_HANG_AT=$point"
      set -- env "LMDEQ_HANG_AT=$point" "$@"
    else
      echo "SIMULATE_TIMEOUT: $CURRENT_STEP hangs instead of running: $*"
      set -- sleep 86400
    fi
  fi
  timeout -k "$KILL_S" "$left" "$@"
}
pycmd() {  # pycmd ARGS...: run python ARGS under the step's cap (smoke, with ARGCHECK=1: queue it instead)
  if [ "$SMOKE" = 1 ] && [ "${ARGCHECK:-0}" = 1 ] && ! simulating_timeout; then
    { printf '%s\t' "$CURRENT_STEP"; printf '%q ' "$@"; echo; } >>"$QUEUE"
    echo "queued for the argument check: python $*"
    return 75  # (a status no command here returns: "queued")
  fi
  capped $PY "$@"
}
bench() {  # bench ARGS...: one `lmdeq bench` run with the common settings
  pycmd -m lmdeq.app.cli bench --steps 5 --warmup 2 --out "$RESULTS" "$@" "${BENCH_EXTRA[@]}"
}
BENCH_METHODS=original,authors,lmdeq
find_bench_methods() {  # BENCH_METHODS: original_jr too once this lmdeq's speedup.METHODS has it (asked at run time)
  local found
  found=$(timeout 60 $PY scripts/gpu_check_helpers.py methods) && [ -n "$found" ] && BENCH_METHODS=$found
  echo "speed-up methods: $BENCH_METHODS"
}

# ---- the build ---------------------------------------------------------------------------------------------
find_ninja() {  # ninja on PATH (a pip-installed one beside the python counts): without it the CUDA build is serial
  [ "$SMOKE" = 1 ] && [ "${SIMULATE_NO_NINJA:-0}" = 1 ] && return 1
  command -v ninja >/dev/null && return 0
  local bin
  bin=$(dirname "$(command -v "$PY")")
  [ -x "$bin/ninja" ] && export PATH=$bin:$PATH
  command -v ninja >/dev/null
}
choose_arch_list() {  # build for the GPU present: an inherited multi-arch list multiplies the compile time
  if [ -n "${ARCH_LIST:-}" ]; then
    export TORCH_CUDA_ARCH_LIST=$ARCH_LIST
  elif [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    echo "ignoring the inherited TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (compile time): building for the GPU" \
         "present (ARCH_LIST=... to choose)"
    unset TORCH_CUDA_ARCH_LIST
  fi
}
setup_py() {  # setup_py LOG [ENV...]: `setup.py build_ext --inplace` under the step's cap (KEEP_S honoured)
  local log=$1 legacy=0 rc
  shift
  # setuptools < 77 rejects pyproject.toml's SPDX `license = "MIT"`; nothing can be installed here, so such an
  # image builds with the older table form, put back right after.
  if ! $PY -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
    echo "setuptools < 77: building with the pre-PEP 639 license table in pyproject.toml"
    cp pyproject.toml "$WORK/pyproject.toml.orig" && legacy=1
    sed -i 's/^license = "MIT"$/license = { text = "MIT" }/' pyproject.toml
  fi
  capped env "$@" $PY setup.py build_ext --inplace >"$log" 2>&1
  rc=$?
  [ "$legacy" = 1 ] && cp "$WORK/pyproject.toml.orig" pyproject.toml
  return $rc
}
build_usable() {  # build_usable [--want-cuda]: setup.py's exit status is not enough: read its record, import lmdeq._C
  $PY scripts/gpu_check_helpers.py check-build "$@"
}
build_without_cuda() {  # the C++ CPU kernels only (Triton still runs on the GPU); 73: built, without CUDA kernels
  echo "building with LMDEQ_BUILD_CUDA=0: C++ CPU kernels, Triton on the GPU"
  local CURRENT_STEP=build-retry  # (a simulated timeout of the build hangs its CUDA part only)
  setup_py "$LOGS/build-cpu.log" LMDEQ_BUILD_CUDA=0 || { local rc=$?; tail -15 "$LOGS/build-cpu.log"; return $rc; }
  cp lmdeq/_build_info.json "$RESULTS/build_info.json" 2>/dev/null
  build_usable || return 1
  return 73
}
build_extension() {  # lmdeq._C in place: 0 with usable CUDA kernels, 73 without (STEP_NOTE says why), else failed
  local nvcc=${CUDA_HOME:+$CUDA_HOME/bin/nvcc}
  [ -n "$nvcc" ] && [ -x "$nvcc" ] || nvcc=$(command -v nvcc || true)
  [ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; }
  echo "nvcc: ${nvcc:-not found (CPU kernels only)}"
  choose_arch_list
  if ! find_ninja; then
    STEP_NOTE="no ninja on PATH: a serial CUDA build would not fit its cap; built with LMDEQ_BUILD_CUDA=0"
    echo "no ninja on PATH: torch would compile the CUDA sources one at a time, past the step's cap"
    build_without_cuda
    return
  fi
  echo "ninja: $(command -v ninja)"
  # the CUDA build keeps up to 45 s of the step (a quarter of a smaller cap) for the retry without CUDA
  local keep=$((STEP_CAP / 4 < 45 ? STEP_CAP / 4 : 45))
  KEEP_S=$keep setup_py "$LOGS/build-cuda.log"
  local rc=$?
  if [ "$rc" = 0 ]; then
    tail -2 "$LOGS/build-cuda.log"
    cp lmdeq/_build_info.json "$RESULTS/build_info.json" 2>/dev/null
    build_usable --want-cuda && return 0
    STEP_NOTE="the CUDA build is not usable: built with LMDEQ_BUILD_CUDA=0"
  else
    local what="failed (exit $rc)"
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && what="timed out"
    echo "CUDA build $what (tail of logs/build-cuda.log):"
    tail -15 "$LOGS/build-cuda.log"
    STEP_NOTE="CUDA build $what: built with LMDEQ_BUILD_CUDA=0"
  fi
  build_without_cuda
}
start_during_build() {  # tests-triton in the background, capped at the build step's end
  local i
  i=$(index_of tests-triton)
  echo "tests-triton: started beside the build (logs/tests-triton.log)"
  ( CURRENT_STEP=tests-triton; gpu_tests tests-triton tests/ops/test_gpu.py -k triton ) >"$LOGS/tests-triton.log" 2>&1 &
  DURING_PID=$! DURING_START=$(now)
  GIVEN[i]=$STEP_CAP
}
finish_during_build() {  # wait for tests-triton and record its status
  local i rc
  i=$(index_of tests-triton)
  wait "$DURING_PID"
  rc=$?
  USED[i]=$(($(now) - DURING_START))
  STATUS[i]=$(describe "$rc")
  echo "tests-triton: ${STATUS[$i]} after ${USED[$i]} s"
}
step_build() {
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  start_during_build
  local rc=0
  if [ "${SKIP_BUILD:-$SMOKE}" = 1 ]; then  # (the smoke run builds only when asked: SKIP_BUILD=0)
    echo "SKIP_BUILD=1: using the lmdeq._C already in the tree"
  else
    build_extension
    rc=$?
  fi
  finish_during_build
  return $rc
}

# ---- the tests ---------------------------------------------------------------------------------------------
simulated_failure() {  # simulated_failure NAME: smoke: the SIMULATE_FAILED_TEST entry of this group ("", fail, crash)
  [ "$SMOKE" = 1 ] || return
  local entry
  for entry in ${SIMULATE_FAILED_TEST:-}; do
    case $entry in "$1") echo fail ;; "$1":crash) echo crash ;; esac
  done
}
stand_in_tests() {  # stand_in_tests NAME KIND: a test file whose CUDA case fails (or crashes pytest), Triton passes
  local file=$WORK/simulated/test_simulated_${1//-/_}.py
  mkdir -p "$WORK/simulated"
  cat >"$file" <<EOF
# scripts/gpu_check.sh --smoke, SIMULATE_FAILED_TEST=$1: a stand-in for a wrong CUDA kernel (or a crash)
import os
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_simulated_kernel(backend):
    if backend == "cuda" and "$2" == "crash":
        os.abort()  # as an illegal memory access ends the process: no JUnit XML
    assert backend != "cuda", "simulated: the CUDA kernel's result is wrong"
EOF
  echo "$file"
}
gpu_tests() {  # gpu_tests NAME PYTEST-ARGS...: one group of the `gpu` tests in its own process
  local name=$1 timeout_args=() failure
  shift
  failure=$(simulated_failure "$name")
  if [ "$SMOKE" = 1 ]; then
    # no GPU here: the selection must exist (collected, in the argument check), nothing of it runs
    ARGCHECK=1 pycmd -m pytest -m gpu "$@" --collect-only -q -p no:cacheprovider
    local rc=$?
    [ -n "$failure" ] || return $rc
    local how=fails
    [ "$failure" = crash ] && how="crashes pytest"
    echo "SIMULATE_FAILED_TEST: $name runs a stand-in whose CUDA test $how"
    set -- "$(stand_in_tests "$name" "$failure")"
  fi
  $PY -c "import pytest_timeout" 2>/dev/null && timeout_args=(--timeout="${TEST_TIMEOUT:-25}")
  capped $PY -m pytest -m gpu "$@" -v -rA -p no:cacheprovider "${timeout_args[@]}" --junitxml="$RESULTS/$name.xml" \
    >"$LOGS/$name-pytest.log" 2>&1
  local rc=$? closing
  closing=$(grep -E "^=+ .+ in [0-9.]+s" "$LOGS/$name-pytest.log" | tail -1)  # pytest's closing line
  echo "${closing:-(no closing line: the process died or was stopped; see logs/$name-pytest.log)}"
  if [ "$rc" = 0 ] && ! grep -qE "[0-9]+ passed" <<<"$closing"; then
    echo "no test passed: is the GPU visible to torch? (see logs/info.log)"
    return 1
  fi
  return $rc
}
op_tests() {  # op_tests NAME KEYWORD: one op's GPU tests; their Triton half again only if tests-triton did not finish
  local keyword=$2
  [ -f "$RESULTS/tests-triton.xml" ] && keyword="$keyword and not triton"
  gpu_tests "$1" tests/ops/test_gpu.py -k "$keyword"
}
step_info() { pycmd -m lmdeq.app.info; }
step_tests_fixed_point() { op_tests tests-fixed-point fixed_point; }
step_tests_anderson() { op_tests tests-anderson anderson; }
step_tests_power_iteration() { op_tests tests-power-iteration power_iteration; }
step_tests_graphs() {
  gpu_tests tests-graphs tests/deq/test_cuda_graphs.py tests/deq/test_graphed_call.py tests/models/test_cuda_graphs.py
}

apply_test_verdicts() {  # before the benchmark steps: leave out what the GPU tests found broken (logs/fallback.txt)
  local groups=() i name verdict failed graphs
  for i in "${!STEPS[@]}"; do
    name=${STEPS[$i]}
    [[ $name == tests-* ]] && groups+=("$name=${STATUS[$i]:-not run}")
  done
  verdict=$($PY scripts/gpu_check_helpers.py verdict --results "$RESULTS" --logs "$LOGS" "${groups[@]}")
  failed=$(sed -n 's/^failed_backends=//p' <<<"$verdict")
  graphs=$(sed -n 's/^graphs_failed=//p' <<<"$verdict")
  [ -n "$failed" ] && KERNEL_SKIP=(--skip-backends "${failed// /,}")
  local backend=""  # (Triton alone failing needs none: auto prefers the CUDA kernels, which passed)
  case " $failed " in
    *" cuda "*" triton "*) backend=torch ;;
    *" cuda "*) backend=triton ;;
  esac
  {
    grep '^#' <<<"$verdict" | sed 's/^# /  /'
    local env_set="" line="" part parts=()
    [ -n "$backend" ] && env_set="LMDEQ_BACKEND=$backend"
    [ "$graphs" = 1 ] && env_set="${env_set:+$env_set }LMDEQ_CUDA_GRAPHS=0"
    [ -n "$env_set" ] && parts+=("$env_set")
    [ -n "$failed" ] && parts+=("the kernel benchmark leaves out $failed")
    for part in "${parts[@]}"; do line+="${line:+; }$part"; done
    echo "fallback for the benchmark steps: ${line:-none (no GPU test group failed)}"
    # on the CPU of a smoke run LMDEQ_BACKEND=triton would run the Triton interpreter for minutes: reported only
    [ -n "$backend" ] && [ "$SMOKE" = 1 ] && echo "(smoke: LMDEQ_BACKEND=$backend reported, not set: this is a CPU)"
  } | tee "$LOGS/fallback.txt"
  [ -n "$backend" ] && [ "$SMOKE" = 0 ] && export LMDEQ_BACKEND=$backend
  [ "$graphs" = 1 ] && export LMDEQ_CUDA_GRAPHS=0
  return 0
}

# ---- the benchmarks ----------------------------------------------------------------------------------------
train_budget_minutes() {  # per method: the planned cap less the set-up, shared by the two methods
  local cap=${CAPS[$(index_of train)]}
  awk -v s=$(((cap - TRAIN_SETUP_S) / 2)) 'BEGIN { printf "%.3f", (s < 1 ? 1 : s) / 60 }'
}
collect_trained_weights() {  # the checkpoints the training left (saved every round): certified for (b) and (c)
  local run
  for run in lmdeq original; do
    [ -f "$RUNS/$run/last.pt" ] || continue
    WEIGHTS+=(--weights "$RUNS/$run/last.pt")
    cp "$RUNS/$run/metrics.jsonl" "$RESULTS/train-$run.jsonl" 2>/dev/null
  done
  echo "trained weights: ${WEIGHTS[*]:-none}"
}
step_train() {
  if [ ! -e "$DATA" ]; then
    echo "no $DATA (run scripts/prepare_gpu_carry.py and carry gpu_carry): no trained weights"
    return 74
  fi
  pycmd scripts/gpu_train.py --data "$DATA" --protocol gpu --target 0.40 --epochs 1 --methods lmdeq,original \
    --variants '' --limit-train "$TRAIN_IMAGES" --limit-val "$VAL_IMAGES" --evals-per-epoch 4 \
    --budget-minutes "$(train_budget_minutes)" --val-fraction 0.1 --no-progress --out "$RESULTS" \
    --save-runs "$RUNS" --tag=-subset "${TTA_EXTRA[@]}"
  local rc=$?
  collect_trained_weights
  [ "$rc" != 0 ] && [ ${#WEIGHTS[@]} -gt 0 ] && STEP_NOTE="the checkpoints of its last whole round are kept"
  return $rc
}
say_which_weights() {  # the trained weights, or plainly none: never a silent run on init weights only
  local i
  i=$(index_of train)
  if [ ${#WEIGHTS[@]} -gt 0 ]; then
    echo "speed-up on init and trained weights (${WEIGHTS[*]}; the training step: ${STATUS[$i]:-not run})"
  else
    echo "speed-up on init weights only: the training step (${STATUS[$i]:-not run}) left no checkpoint"
  fi
}
step_speedup() {
  say_which_weights
  echo "speed-up methods: $BENCH_METHODS"
  bench --methods "$BENCH_METHODS" "${BENCH_DATA[@]}" "${WEIGHTS[@]}"
}
step_kernels() {  # (KERNEL_SKIP: the backends whose GPU tests failed)
  pycmd benchmarks/kernels.py --quick --compile-for none --out "$RESULTS" "${KERNEL_SKIP[@]}" "${KERNEL_EXTRA[@]}"
}
step_kernels_compile() {
  ARGCHECK=1 pycmd benchmarks/kernels.py --quick --cases large:128 --compile-for large:128 \
    --out "$RESULTS/kernels-compile" "${KERNEL_SKIP[@]}"
}
step_profile() { ARGCHECK=1 bench --profile --steps 1 --methods "$BENCH_METHODS" --tag=-profile "${BENCH_DATA[@]}"; }
step_bf16() { ARGCHECK=1 bench --methods lmdeq --bf16 --tag=-bf16 "${BENCH_DATA[@]}"; }
step_eager() { ARGCHECK=1 bench --methods lmdeq --no-cuda-graphs --tag=-eager "${BENCH_DATA[@]}"; }
step_nchw() { ARGCHECK=1 bench --methods lmdeq --no-channels-last --tag=-nchw "${BENCH_DATA[@]}"; }
step_checked() { ARGCHECK=1 bench --methods lmdeq --solve-mode checked --no-cuda-graphs --tag=-checked "${BENCH_DATA[@]}"; }

# ---- bookkeeping -------------------------------------------------------------------------------------------
describe() {  # describe RC: a step's status word
  case $1 in
    0) echo ok ;; 124 | 137) echo "FAILED (timeout)" ;;
    73) echo "FAILED (no CUDA kernels)" ;; 74) echo "skipped (no data)" ;;
    75) echo "queued (smoke)" ;;
    *) echo "FAILED (exit $1)" ;;
  esac
}
write_summary() {
  local f=$WORK/summary.txt i log
  {
    echo "gpu_check ($MODE) on $(uname -n), $(date -u +%FT%TZ); budget ${TOTAL_S} s, used $(($(now) - START)) s"
    printf '%-22s %6s %6s %6s  %s\n' step cap given used status
    for i in "${!STEPS[@]}"; do
      printf '%-22s %6s %6s %6s  %s\n' "${STEPS[$i]}" "${CAPS[$i]}" "${GIVEN[$i]:--}" "${USED[$i]:--}" \
        "${STATUS[$i]:-not run}"
    done
    echo
    [ -f "$LOGS/build.log" ] && grep -E "^(build (not )?usable|no ninja|setuptools < 77)" "$LOGS/build.log"
    [ -f "$LOGS/fallback.txt" ] && cat "$LOGS/fallback.txt"
    [ -f "$LOGS/info.log" ] && grep -E "^(torch|triton|extension|  compiled|backends for cuda|  unavailable)" "$LOGS/info.log"
    for log in "$LOGS"/tests-*-pytest.log; do
      [ -f "$log" ] && echo "$(basename "$log" -pytest.log): $(grep -E "^=+ .+ in [0-9.]+s" "$log" | tail -1)"
    done
    [ -f "$LOGS/argcheck.log" ] && grep -E "^selected [0-9]+ tests" "$LOGS/argcheck.log"
    [ -f "$LOGS/speedup.log" ] && grep -E "^speed-up (on|methods)" "$LOGS/speedup.log"
    $PY scripts/gpu_check_helpers.py summary --results "$RESULTS"   # training, speed-up tables, kernel targets
  } >"$f" 2>/dev/null
  cp "$f" "$FINAL/summary.txt"
}
pack() {  # the work folder as one archive (written aside, then moved: never half-written), without the torch files
  # a benchmark may leave there (the time-to-accuracy run's resume state: models and optimisers, too big to return)
  tar czf "$FINAL/gpu-check.tar.gz.part" --exclude='*.pt' -C "$WORK" . 2>/dev/null \
    && mv "$FINAL/gpu-check.tar.gz.part" "$FINAL/gpu-check.tar.gz"
}

planned_after() {  # planned_after INDEX: the seconds the later planned steps are owed (their caps and kill slack)
  local j total=0
  for ((j = $1 + 1; j < ${#STEPS[@]}; j++)); do
    [ "${KINDS[$j]}" = planned ] && total=$((total + CAPS[j] + KILL_S))
  done
  echo "$total"
}
time_for() {  # time_for INDEX: a planned step gets its cap and, of the time the earlier steps left unused, up to as
  # much again (so that a hang cannot eat it all), never what the later planned steps are owed; an optional
  # step gets its cap if all of it is left after the planned steps, else 0
  local i=$1 left
  left=$((DEADLINE - $(now) - KILL_S - $(planned_after "$i")))
  if [ "${KINDS[$i]}" = optional ]; then
    [ "$left" -ge "${CAPS[$i]}" ] && echo "${CAPS[$i]}" || echo 0
  else
    echo $((left < 2 * CAPS[i] ? left : 2 * CAPS[i]))
  fi
}
run_step() {  # run_step INDEX: the step's function, in this shell, under its time; output to logs/NAME.log
  local i=$1 name=${STEPS[$1]} cap=${CAPS[$1]} given start rc
  [ "${KINDS[$i]}" = during-build ] && return  # (started and recorded by the build step)
  given=$(time_for "$i")
  if [ "$given" -le 0 ]; then
    STATUS[i]="skipped (no time left)"
    [ "${KINDS[$i]}" = optional ] && STATUS[i]="skipped (less than its cap left)"
    return
  fi
  echo
  local extra=""
  [ "$given" -gt "$cap" ] && extra=" + $((given - cap)) unused by earlier steps"
  echo "=== ${name}: ${given} s (cap ${cap}${extra}), $(date +%T), $((DEADLINE - $(now))) s to the deadline"
  start=$(now)
  STEP_END=$((start + given)) STEP_CAP=$given CURRENT_STEP=$name STEP_NOTE=""
  "step_${name//-/_}" >"$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 12 "$LOGS/$name.log"
  USED[i]=$(($(now) - start)) GIVEN[i]=$given
  STATUS[i]="$(describe "$rc")${STEP_NOTE:+: $STEP_NOTE}"
  [ "$rc" -eq 0 ] || echo "--- ${name}: ${STATUS[$i]}"
}

print_plan >"$LOGS/plan.txt"
for i in "${!STEPS[@]}"; do
  if [ "${STEPS[$i]}" = train ]; then  # every later step is a benchmark: what do the test results leave out, and
    apply_test_verdicts                # which methods does this lmdeq's speed-up benchmark have
    find_bench_methods
  fi
  run_step "$i"
  write_summary
  pack
done

if [ "$SMOKE" = 1 ] && [ -s "$QUEUE" ]; then  # the queued commands' arguments and test selections, one process
  echo
  echo "=== smoke: checking $(wc -l <"$QUEUE") queued command lines"
  STEP_END=$(($(now) + 120)) CURRENT_STEP=argcheck
  capped $PY scripts/check_args.py --queue "$QUEUE" >"$LOGS/argcheck.log" 2>&1
  grep -P "^[a-z0-9-]+\t(ok|FAILED)\t" "$LOGS/argcheck.log" | tee "$LOGS/argcheck.txt"
  for i in "${!STEPS[@]}"; do
    [[ "${STATUS[$i]:-}" == "queued (smoke)"* ]] || continue
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
