"""The kernel benchmark (lmdeq/bench/kernels.py, run as benchmarks/kernels.py): the variants of a case alternate
round by round and the speed-up over eager is the median of the per-round ratios (fake timer medians, no real
timing)."""
from pathlib import Path

import pytest

from lmdeq.bench import kernels
from lmdeq.bench.interleave import spread

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
    monkeypatch.setattr(kernels, "configure_process", lambda: None)   # keep the test process's allocator
    with pytest.raises(SystemExit):
        kernels.main(["--rounds", "0", "--out", "/nonexistent"])
    assert "--rounds must be >= 1" in capsys.readouterr().err



def test_the_script_is_the_benchmark_with_results_next_to_it():
    script = load_script("benchmarks/kernels.py")
    assert script.main is kernels.main
    assert kernels.build_parser(ROOT / "benchmarks" / "results").parse_args([]).out == ROOT / "benchmarks" / "results"
    assert kernels.build_parser().parse_args(["--out", "x"]).out == Path("x")
