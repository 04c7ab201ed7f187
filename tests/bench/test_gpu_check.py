"""scripts/gpu_check.sh, the one prepared GPU run: its plan fits its budget (most valuable steps first), a plan
over budget is refused before anything runs, and the whole script runs here in its CPU smoke mode, so that a
typo, a wrong flag or a broken summary fails CI instead of wasting the GPU window.

Two smoke runs walk every failure path the GPU run relies on (the script's SIMULATE_* knobs):

* faults: no ninja (the build is not ok: built without CUDA, reported), `lmdeq info` past its cap, a wrong CUDA
  kernel in one test group, a crash (as an illegal memory access) in another, failed CUDA-graph tests (the
  benchmark steps then fall back: LMDEQ_BACKEND=triton, LMDEQ_CUDA_GRAPHS=0, the kernel benchmark leaves cuda
  out; summary.txt says so); training, speed-up (on the trained weights) and kernel benchmark run for real, tiny;
* timeouts: every step runs past its cap; the CUDA build is retried without CUDA in the time it kept, the
  training keeps its first round's checkpoint and the speed-up step says it runs on it, the kernel benchmark
  keeps its first case, and every step still gets its turn.

Both check that exactly two files (one archive, one summary) come back and that the summary shows the training."""
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from PIL import Image

from .scripts import ROOT, load_script

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PLANNED = ["build", "info", "tests-fixed-point", "tests-anderson", "tests-power-iteration", "tests-graphs", "train",
           "speedup", "kernels"]
DURING_BUILD = ["tests-triton"]
OPTIONAL = ["kernels-compile", "profile", "bf16", "eager", "nchw", "checked"]
ALL = PLANNED + DURING_BUILD + OPTIONAL
helpers = load_script("scripts/gpu_check_helpers.py")


def _run(args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAP_", "LMDEQ_BACKEND", "SIMULATE_"))}
    env.pop("OUT", None)
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _plan_rows(text):
    rows, optional = [], False
    for line in text.splitlines():
        if line.startswith("then, in order"):
            optional = True
        m = re.match(r"^\s*(\d+|\+)\s+(\S+)\s+(\d+|-)\s+\S", line)
        if m:
            kind = "during-build" if m[1] == "+" else "optional" if optional else "planned"
            rows.append((m[2], None if m[3] == "-" else int(m[3]), kind))
    total = re.search(r"planned total\s+(\d+)\s+<= (\d+): (fits|OVER BUDGET)", text)
    budget = re.search(r"budget TOTAL_S=(\d+) s, of which (\d+) s are kept", text)
    return rows, total, budget


def test_plan_fits_its_budget_most_valuable_first():
    proc = _run(["--plan"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows, total, budget = _plan_rows(proc.stdout)
    assert [r[0] for r in rows] == PLANNED[:1] + DURING_BUILD + PLANNED[1:] + OPTIONAL
    assert [r[0] for r in rows if r[2] == "planned"] == PLANNED
    assert [r[0] for r in rows if r[2] == "optional"] == OPTIONAL
    planned = sum(cap for _, cap, kind in rows if kind == "planned")
    total_s, reserve = int(budget[1]), int(budget[2])
    assert total_s == 570 and int(total[1]) == planned and int(total[2]) == total_s - reserve
    assert planned + reserve <= total_s and total[3] == "fits"
    assert total_s < 600  # the device tool's limit on one command
    caps = {name: cap for name, cap, _ in rows}
    assert caps["info"] >= 20  # the first CUDA start-up


def test_a_plan_over_budget_is_refused(tmp_path):
    proc = _run(["--plan"], {"TOTAL_S": "400"})
    assert proc.returncode == 1 and "OVER BUDGET" in proc.stdout
    proc = _run(["--plan"], {"CAP_speedup": "200"})  # one step's cap raised past the budget
    assert proc.returncode == 1 and re.search(r"speedup\s+200", proc.stdout)
    out = tmp_path / "out"
    proc = _run([], {"TOTAL_S": "400", "OUT": str(out), "WORK_DIR": str(tmp_path / "work")})
    assert proc.returncode == 2 and "nothing run" in proc.stderr
    assert not out.exists() and not (tmp_path / "work").exists()
    assert _run(["--bogus"]).returncode == 2


FAKE_PYTHON = """#!/usr/bin/env bash
# python3 for the smoke test: setup.py only records how it was called (the CUDA build fails to compile, the
# CPU-only one "succeeds" without building), and so does the build check (usable); anything else is the real one.
if [ "${1:-}" = setup.py ]; then
  echo "setup.py LMDEQ_BUILD_CUDA=${LMDEQ_BUILD_CUDA:-unset} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}" >> "$FAKE_LOG"
  [ "${LMDEQ_BUILD_CUDA:-1}" = 0 ] && exit 0
  echo "csrc/cuda/anderson.cu(1): error: simulated" >&2
  exit 1
fi
if [ "${1:-}" = scripts/gpu_check_helpers.py ] && [ "${2:-}" = check-build ]; then
  echo "check-build ${*:3}" >> "$FAKE_LOG"
  echo "build usable: (fake)"
  exit 0
fi
exec "%s" "$@"
"""


@pytest.fixture
def tiny_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(2):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _statuses(summary):
    rows = {}
    for line in summary.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s+(\d+|-)\s+(\d+|-)\s+(.+)$", line)
        if m and m[1] in ALL:
            rows[m[1]] = {"cap": int(m[2]), "given": m[3], "used": m[4], "status": m[5]}
    return rows


def _smoke(tmp_path, images, env_extra):
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON % sys.executable)
    fake.chmod(0o755)
    env = {"PYTHON": str(fake), "FAKE_LOG": str(tmp_path / "fake.log"), "SKIP_BUILD": "0",
           "OUT": str(tmp_path / "out"), "WORK_DIR": str(tmp_path / "work"), "RUNS_DIR": str(tmp_path / "runs"),
           "LMDEQ_CACHE": str(tmp_path / "cache"), "DATA": str(images), "PYTHONPATH": str(ROOT), **env_extra}
    start = time.monotonic()
    proc = _run(["--smoke"], env, timeout=600)
    elapsed = time.monotonic() - start
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "summary.txt"], proc.stdout[-3000:]
    summary = (out / "summary.txt").read_text()
    assert summary in proc.stdout  # printed last, for the device tool's output tail
    status = _statuses(summary)
    assert set(status) == set(ALL), summary
    tar = tarfile.open(out / "gpu-check.tar.gz")
    names = set(tar.getnames())
    for step in ALL:
        assert status[step]["status"].startswith("skipped") or f"./logs/{step}.log" in names, step
    assert not any(n.endswith(".pt") for n in names)  # checkpoints stay out of the archive
    fake_log = (tmp_path / "fake.log").read_text().splitlines() if (tmp_path / "fake.log").exists() else []
    return proc, summary, status, tar, names, fake_log, elapsed


def _json(tar, names, pattern):
    return json.load(tar.extractfile(next(n for n in sorted(names) if re.search(pattern, n))))


def _log(tar, name):
    return tar.extractfile(f"./logs/{name}").read().decode()


def test_smoke_run_faults_fall_back_and_are_reported(tmp_path, tiny_images):
    hang = ["info", "profile", "bf16", "eager", "nchw", "checked"]   # (kernels-compile: argument-checked)
    proc, summary, status, tar, names, fake_log, elapsed = _smoke(tmp_path, tiny_images, {
        "SIMULATE_NO_NINJA": "1", "SIMULATE_TIMEOUT": " ".join(hang), "CAP_info": "2",
        **{f"CAP_{step}": "1" for step in hang[1:]},
        "SIMULATE_FAILED_TEST": "tests-anderson tests-power-iteration:crash tests-graphs",
        "TORCH_CUDA_ARCH_LIST": "7.0;7.5;8.0;8.6;9.0;10.0"})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]  # the steps arranged to fail failed; the others ran
    # item 5: without ninja no CUDA build is tried; the CPU-only build is checked, and the step is not ok
    assert status["build"]["status"].startswith("FAILED (no CUDA kernels): no ninja on PATH"), summary
    assert fake_log == ["setup.py LMDEQ_BUILD_CUDA=0 TORCH_CUDA_ARCH_LIST=unset", "check-build "]
    assert "ignoring the inherited TORCH_CUDA_ARCH_LIST=7.0;7.5;8.0;8.6;9.0;10.0" in text
    assert "no ninja on PATH" in summary
    # a step past its cap is stopped there (twice its cap at most, from time left unused), the next ones run
    info = status["info"]
    assert info["status"] == "FAILED (timeout)" and int(info["given"]) <= 4 and int(info["used"]) <= 4 + 2 + 1
    # item 4: a wrong CUDA kernel, a crash, failed graph tests -> the fallback, used and reported
    assert status["tests-anderson"]["status"] == "FAILED (exit 1)"
    assert status["tests-power-iteration"]["status"].startswith("FAILED (exit")  # pytest aborted, no JUnit XML
    assert status["tests-graphs"]["status"] == "FAILED (exit 1)"
    assert "./results/tests-power-iteration.xml" not in names
    assert re.search(r"tests-anderson FAILED \(exit 1\): \S+::test_simulated_kernel\[cuda\] -> cuda", summary)
    assert re.search(r"tests-power-iteration FAILED \(exit \d+\): \S+::test_simulated_kernel\[cuda\] -> cuda", summary)
    assert ("fallback for the benchmark steps: LMDEQ_BACKEND=triton LMDEQ_CUDA_GRAPHS=0; the kernel benchmark "
            "leaves out cuda") in summary
    assert "(smoke: LMDEQ_BACKEND=triton reported, not set: this is a CPU)" in summary
    for step in ("tests-triton", "tests-fixed-point"):
        assert status[step]["status"] == "ok (smoke: arguments checked)", (step, summary)
    assert len(re.findall(r"^selected [1-9]\d* tests: -m gpu", summary, re.M)) == 5  # every group selects tests
    # item 2 and 9: the training ran on multiples of its batch, saved its weights, and the summary shows it
    tta = _json(tar, names, r"results/time_to_accuracy-.*-subset\.json$")
    assert tta["settings"]["train_images"] % tta["settings"]["batch_size"] == 0
    assert re.search(r"^training \(time_to_accuracy-.*-subset\.json, finished\)", summary, re.M)
    assert re.search(r"^  \(c\) lmdeq fast path: 2 steps \(1\.00 epochs\), [\d.]+ s of training, val acc", summary,
                     re.M)
    assert (tmp_path / "runs" / "lmdeq" / "last.pt").exists()
    assert status["train"]["status"] == "ok"
    # the speed-up step ran on the trained weights and says so; its methods follow speedup.METHODS
    speedup = _json(tar, names, r"results/speedup-[^/]*\.json$")
    assert {r["weights"] for r in speedup["rows"]} == {"init", "trained"}
    assert "trained: (c) lmdeq fast path <- " + str(tmp_path / "runs" / "lmdeq" / "last.pt") in speedup["weights_used"]
    assert speedup["weights_used"] in summary and "peak reserved MiB (process)" in summary
    assert f"speed-up methods: {','.join(helpers.bench_methods())}" in summary
    assert status["speedup"]["status"] == "ok"
    # item 1: the kernel benchmark, headline first, finished, without the backend whose tests failed
    kernels = _json(tar, names, r"results/kernels-[^/]*\.json$")
    assert kernels["complete"] is True and "cuda" in kernels["skipped_backends"] and kernels["rows"]
    assert not any(r["variant"] == "compile" for r in kernels["rows"])
    assert status["kernels"]["status"] == "ok" and "kernels (kernels-" in summary
    assert "--skip-backends cuda" in _log(tar, "argcheck.log")  # (the optional torch.compile step, checked)
    assert status["kernels-compile"]["status"] == "ok (smoke: arguments checked)", summary
    for step in hang[1:]:  # the optional steps, each given its cap, stopped there
        assert status[step]["status"] == "FAILED (timeout)" and status[step]["given"] == "1", (step, summary)
    assert elapsed < 300


def test_smoke_run_every_step_past_its_cap(tmp_path, tiny_images):
    # Small caps and a budget with only a few seconds over the plan: every planned step hangs until its cap
    # stops it (the training and the kernel benchmark after their first results); no optional step fits.
    # (the training needs ~8 s to its first checkpoint here, the kernel benchmark ~5 s to its first case; the
    # build keeps a quarter of its time, 3 s, for the retry without CUDA)
    caps = {"build": 12, "info": 1, "tests-fixed-point": 1, "tests-anderson": 1, "tests-power-iteration": 1,
            "tests-graphs": 1, "train": 18, "speedup": 1, "kernels": 12}
    env = {f"CAP_{k.replace('-', '_')}": str(v) for k, v in caps.items()}
    total = sum(caps.values()) + 15 + 2 * len(PLANNED) + 1
    bin_dir = tmp_path / "bin"   # a ninja on PATH, as the GPU machine's: the CUDA build is tried
    bin_dir.mkdir()
    (bin_dir / "ninja").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "ninja").chmod(0o755)
    proc, summary, status, tar, names, fake_log, elapsed = _smoke(tmp_path, tiny_images, {
        **env, "TOTAL_S": str(total), "SIMULATE_TIMEOUT": "all", "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]
    # the CUDA build runs past what it may use; the retry without CUDA, in the time it kept, builds
    assert status["build"]["status"] == ("FAILED (no CUDA kernels): CUDA build timed out: built with "
                                         "LMDEQ_BUILD_CUDA=0"), summary
    assert fake_log == ["setup.py LMDEQ_BUILD_CUDA=0 TORCH_CUDA_ARCH_LIST=unset", "check-build "]
    assert "SIMULATE_TIMEOUT: build hangs instead of running" in _log(tar, "build.log")
    for step in PLANNED[1:] + DURING_BUILD:
        assert status[step]["status"].startswith("FAILED (timeout)"), (step, summary)
    # every planned step had at least its cap and at most twice it, and kept to it
    for step in PLANNED:
        given, used = int(status[step]["given"]), int(status[step]["used"])
        assert caps[step] <= given <= 2 * caps[step] and used <= given + 2 + 1, (step, summary)
    for step in OPTIONAL:
        assert status[step]["status"] == "skipped (less than its cap left)", (step, summary)
    # tests-triton did not finish, so its tests are selected again in the groups after it
    assert "tests-triton FAILED (timeout): did not finish" in summary
    # the training keeps its first round's checkpoint; the speed-up step says that it runs on it
    assert "the checkpoints of its last whole round are kept" in status["train"]["status"]
    assert (tmp_path / "runs" / "lmdeq" / "last.pt").exists()
    assert re.search(r"^speed-up on init and trained weights \(--weights \S+/lmdeq/last\.pt; the training step: "
                     r"FAILED \(timeout\)", summary, re.M)
    assert re.search(r"^training \(time_to_accuracy-.*-subset\.json, cut short: rounds so far\)", summary, re.M)
    # the kernel benchmark keeps the case it finished
    kernels = _json(tar, names, r"results/kernels-[^/]*\.json$")
    assert kernels["complete"] is False and {r["size"] for r in kernels["rows"]} == {"small"}
    assert "kernels (kernels-" in summary and "cut short" in summary
    # the test groups that timed out: the CUDA kernels and the graphs are suspected, the fallback says so
    assert "fallback for the benchmark steps: LMDEQ_BACKEND=triton LMDEQ_CUDA_GRAPHS=0" in summary
    assert elapsed < 300


def test_stand_alone_helpers(tmp_path):
    """The build check and the test verdict, on files written here."""
    info = tmp_path / "build_info.json"
    info.write_text(json.dumps({"extension": True, "with_cuda": False, "cuda_reason": "LMDEQ_BUILD_CUDA=0"}))
    assert helpers.build_problems(str(info), want_cuda=False, module="json") == []
    assert helpers.build_problems(str(info), want_cuda=True, module="json") == [
        "the build record says the CUDA kernels were not built (LMDEQ_BUILD_CUDA=0)"]
    problems = helpers.build_problems(str(tmp_path / "missing.json"), want_cuda=False, module="no_such_module_x")
    assert problems[0].startswith("no readable build record")
    info.write_text(json.dumps({"extension": False, "reason": "LMDEQ_BUILD_EXT=0"}))
    (problem, imports) = helpers.build_problems(str(info), want_cuda=False, module="no_such_module_x")
    assert "no extension was built" in problem and imports.startswith("import no_such_module_x fails")

    results, logs = tmp_path / "results", tmp_path / "logs"
    results.mkdir()
    logs.mkdir()
    (results / "tests-anderson.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.ops.test_gpu" name="test_anderson[triton-f32]"/>'
        '<testcase classname="tests.ops.test_gpu" name="test_anderson[cuda-f32]"><failure message="x"/></testcase>'
        '</testsuite></testsuites>')
    (logs / "tests-fixed-point-pytest.log").write_text(
        "tests/ops/test_gpu.py::test_fixed_point_update[cuda-a] PASSED [ 50%]\n"
        "tests/ops/test_gpu.py::test_fixed_point_update[triton-b] Fatal Python error: Aborted\n")
    v = helpers.verdict({"tests-anderson": "FAILED (exit 1)", "tests-fixed-point": "FAILED (exit 134)",
                         "tests-power-iteration": "ok", "tests-triton": "FAILED (timeout)",
                         "tests-graphs": "FAILED (timeout)"}, str(results), str(logs))
    assert v["failed_backends"] == ["cuda", "triton"] and v["graphs_failed"] is True
    assert any("did not finish" in r for r in v["reasons"])
    assert helpers.backend_of("x::test[cuda-float32]") == "cuda" and helpers.backend_of("x::test[float32]") is None
