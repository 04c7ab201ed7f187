"""scripts/gpu_check.sh, the one prepared GPU run: its plan fits its budget (most valuable steps first), a plan
over budget is refused before anything runs, and the whole script runs here in its CPU smoke mode, so that a
typo, a wrong flag or a broken summary fails CI instead of wasting the GPU window. The smoke run also checks
the robustness the GPU run relies on: a compile error of the CUDA build is retried once with
LMDEQ_BUILD_CUDA=0, an inherited multi-arch TORCH_CUDA_ARCH_LIST is ignored, a hanging step is stopped at its
cap while the later steps still run, and exactly two files (one archive, one summary) come back."""
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

from .scripts import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PLANNED = ["build", "info", "tests-fixed-point", "tests-anderson", "tests-power-iteration", "tests-graphs", "train",
           "speedup", "kernels"]
OPTIONAL = ["profile", "bf16", "eager", "nchw", "checked"]


def _run(args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAP_", "LMDEQ_BACKEND"))}
    env.pop("OUT", None)
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _plan_rows(text):
    rows, optional = [], False
    for line in text.splitlines():
        if line.startswith("then, in order"):
            optional = True
        m = re.match(r"^\s*(\d+)\s+(\S+)\s+(\d+)\s+\S", line)
        if m:
            rows.append((m[2], int(m[3]), optional))
    total = re.search(r"planned total\s+(\d+)\s+<= (\d+): (fits|OVER BUDGET)", text)
    budget = re.search(r"budget TOTAL_S=(\d+) s, of which (\d+) s are kept", text)
    return rows, total, budget


def test_plan_fits_its_budget_most_valuable_first():
    proc = _run(["--plan"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows, total, budget = _plan_rows(proc.stdout)
    assert [r[0] for r in rows if not r[2]] == PLANNED and [r[0] for r in rows if r[2]] == OPTIONAL
    planned = sum(cap for _, cap, optional in rows if not optional)
    total_s, reserve = int(budget[1]), int(budget[2])
    assert total_s == 570 and int(total[1]) == planned and int(total[2]) == total_s - reserve
    assert planned + reserve <= total_s and total[3] == "fits"
    assert total_s < 600  # the device tool's limit on one command


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
# python3 for the smoke test: the CUDA build fails to compile, the CPU-only build "succeeds" (without building),
# `lmdeq info` hangs; anything else is the real interpreter.
if [ "${1:-}" = setup.py ]; then
  echo "setup.py LMDEQ_BUILD_CUDA=${LMDEQ_BUILD_CUDA:-unset} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}" >> "$FAKE_LOG"
  [ "${LMDEQ_BUILD_CUDA:-1}" = 0 ] && exit 0
  echo "csrc/cuda/anderson.cu(1): error: simulated" >&2
  exit 1
fi
[ "$*" = "-m lmdeq.info" ] && exec sleep 60
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
        m = re.match(r"^(\S+)\s+(\d+)\s+(\d+|-)\s+(.+)$", line)
        if m and m[1] in PLANNED + OPTIONAL:
            rows[m[1]] = (int(m[2]), m[3], m[4])
    return rows


def test_smoke_run_of_the_whole_script(tmp_path, tiny_images):
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON % sys.executable)
    fake.chmod(0o755)
    out, log = tmp_path / "out", tmp_path / "fake.log"
    env = {"PYTHON": str(fake), "FAKE_LOG": str(log), "SKIP_BUILD": "0", "OUT": str(out),
           "WORK_DIR": str(tmp_path / "work"), "RUNS_DIR": str(tmp_path / "runs"), "LMDEQ_CACHE": str(tmp_path / "cache"),
           "DATA": str(tiny_images), "TORCH_CUDA_ARCH_LIST": "7.0;7.5;8.0;8.6;9.0;10.0", "CAP_info": "3",
           "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = _run(["--smoke"], env, timeout=600)
    elapsed = time.monotonic() - start
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]  # two steps failed, as arranged; the others ran
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "summary.txt"], text[-2000:]
    summary = (out / "summary.txt").read_text()
    assert summary in proc.stdout  # printed last, for the device tool's output tail
    status = _statuses(summary)
    assert set(status) == set(PLANNED + OPTIONAL), summary
    assert status["build"][2].startswith("FAILED (CUDA build; built with LMDEQ_BUILD_CUDA=0)")
    assert status["info"][2] == "FAILED (timeout)" and int(status["info"][1]) <= 3 + 2 + 1
    for step in PLANNED[2:] + OPTIONAL:
        assert status[step][2].startswith("ok"), (step, summary)
    # the build: the inherited multi-arch list ignored, one CUDA attempt, one retry without CUDA
    assert log.read_text().splitlines() == ["setup.py LMDEQ_BUILD_CUDA=unset TORCH_CUDA_ARCH_LIST=unset",
                                            "setup.py LMDEQ_BUILD_CUDA=0 TORCH_CUDA_ARCH_LIST=unset"]
    assert "ignoring the inherited TORCH_CUDA_ARCH_LIST=7.0;7.5;8.0;8.6;9.0;10.0" in proc.stdout
    assert "retrying once with LMDEQ_BUILD_CUDA=0" in proc.stdout
    # every test group selects tests, every GPU-only command line parses
    assert len(re.findall(r"^selected [1-9]\d* tests: -m gpu", summary, re.M)) == 4
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
        speedup = json.load(tar.extractfile(next(n for n in names if re.search(r"results/speedup-.*\.json$", n))))
    for step in PLANNED + OPTIONAL:
        assert f"./logs/{step}.log" in names
    assert {"./summary.txt", "./logs/plan.txt", "./logs/argcheck.log", "./results/build_info.json"} <= names
    assert any(re.search(r"results/time_to_accuracy-.*-subset\.json$", n) for n in names)
    assert not any(n.endswith(".pt") for n in names)  # checkpoints stay out of the archive
    assert {r["weights"] for r in speedup["rows"]} == {"init", "trained"}  # the trained weights reached the bench
    assert elapsed < 300
