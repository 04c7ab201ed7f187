"""The kernel benchmark (lmdeq/app/bench/kernels.py, run as benchmarks/kernels.py): the variants of a case alternate
round by round and the speed-up over eager is the median of the per-round ratios (fake timer medians, no real
timing); the cases run headline first and the JSON is rewritten after each (a run cut short keeps them)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from lmdeq.app.bench import kernels
from lmdeq.app.bench.device import device_slug
from lmdeq.app.bench.interleave import spread

from .scripts import ROOT, load_script


def test_variants_alternate_and_speedups_come_from_the_rounds():
    order = []
    fns = {"eager": lambda: "eager", "cpu": lambda: "cpu", "triton": lambda: "triton"}
    # a timer median per call; the machine gets slower round after round (x1, x2, x4)
    medians = iter([8.0, 2.0, 4.0, 16.0, 4.0, 8.0, 32.0, 8.0, 32.0])

    def median_of(fn):
        order.append(fn())
        return next(medians)

    case = kernels.interleaved_case(fns, 3, median_of)
    assert order == ["eager", "cpu", "triton"] * 3
    assert case["eager"]["ms_all"] == [8.0, 16.0, 32.0] and case["cpu"]["ms_all"] == [2.0, 4.0, 8.0]
    assert case["cpu"]["speedup"] == spread([4.0, 4.0, 4.0])          # the drift cancels round by round
    assert case["triton"]["speedup"]["median"] == 2.0 and case["triton"]["speedup"]["min"] == 1.0
    assert case["eager"]["speedup"]["median"] == 1.0
    assert case["triton"]["spread"] == spread([4.0, 8.0, 32.0])


def test_rounds_must_be_positive(capsys, monkeypatch):
    monkeypatch.setattr(kernels, "configure_or_exit", lambda prog: None)   # keep the test process's allocator
    with pytest.raises(SystemExit):
        kernels.main(["--rounds", "0", "--out", "/nonexistent"])
    assert "argument --rounds: expected a positive integer" in capsys.readouterr().err



def test_the_script_is_the_benchmark_writing_to_a_run_folder_unless_told():
    script = load_script("benchmarks/kernels.py")
    assert script.main is kernels.main
    assert kernels.build_parser().parse_args([]).out is None   # a new run folder (lmdeq/app/bench/outputs.py)
    assert kernels.build_parser().parse_args(["--out", "x"]).out == "x"


def test_cases_run_headline_first_and_parse():
    assert kernels.CASES[:2] == (("large", 128), ("large", 1))  # the targets' cases, before anything else
    assert kernels.parse_cases("all") == kernels.CASES
    assert kernels.parse_cases("small:2, large:1,small:2") == (("small", 2), ("large", 1))
    for bad in ("medium:32", "large", "large:0", "large:x", ""):
        with pytest.raises(Exception, match="SIZE:BATCH|no case"):
            kernels.parse_cases(bad)
    assert kernels.parse_backends("cuda,triton") == ["cuda", "triton"]
    with pytest.raises(Exception, match="backends are"):
        kernels.parse_backends("cudnn")


def test_results_are_written_after_every_case_and_backends_can_be_left_out(tmp_path, monkeypatch):
    """main() with fake timings: the JSON holds every case measured so far (incomplete until the last),
    then the complete result and the PNG; --skip-backends leaves a backend's variants out."""
    monkeypatch.setattr(kernels, "configure_or_exit", lambda prog: None)
    monkeypatch.setattr(kernels, "median_ms", lambda fn, device, quick: 1.0)
    monkeypatch.setattr(kernels, "copy_bandwidth_gbps", lambda device, quick: 10.0)
    seen = []

    def after_case(name):
        saved = json.loads((tmp_path / f"kernels-{device_slug(torch.device('cpu'))}.json").read_text())
        seen.append((saved["complete"], sorted({(r["size"], r["batch"]) for r in saved["rows"]})))

    monkeypatch.setattr(kernels, "fault_point", after_case)
    assert kernels.main(["--device", "cpu", "--rounds", "1", "--cases", "small:2,small:1", "--compile-for", "none",
                         "--skip-backends", "triton", "--skip-backends", "cuda", "--out", str(tmp_path)]) == 0
    assert seen == [(False, [("small", 2)]), (False, [("small", 1), ("small", 2)])]
    result = json.loads(next(tmp_path.glob("kernels-*.json")).read_text())
    assert result["complete"] is True and result["cases"] == ["small:2", "small:1"]
    assert result["skipped_backends"] == ["cuda", "triton"]
    assert {r["variant"] for r in result["rows"]} <= {"eager", "cpu"}
    assert [r["size"] for r in result["rows"]] == ["small"] * len(result["rows"])
    assert next(tmp_path.glob("kernels-*.png")).stat().st_size > 0
    table = next(tmp_path.glob("kernels-*.md")).read_text()
    assert "| op 1: fixed-point update, MDEQ-small B=2, float32 | 1 (1-1) | 1 (1.00x) |" in table


def test_a_hang_point_holds_the_process_until_it_is_killed():
    """LMDEQ_HANG_AT (lmdeq/app/faults.py), which scripts/gpu_check.sh --smoke uses for a step past its cap: the
    named occurrence of the point hangs (the process is still there a while later), the ones before pass."""
    code = ("from lmdeq.app.faults import fault_point\nfault_point('x')\nprint('first passed', flush=True)\n"
            "fault_point('x')\nprint('second passed', flush=True)")
    env = {**os.environ, "LMDEQ_HANG_AT": "x@2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "first passed\n"
        assert "LMDEQ_HANG_AT=x@2: hanging here" in proc.stdout.readline()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    finally:
        proc.kill()
        proc.wait()
