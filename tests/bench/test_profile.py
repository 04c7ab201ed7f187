"""The training-step profile: phases from lmdeq's and the benchmark's profiler ranges, the rest, and the
top operators (host clock on CPU)."""
import pytest
import torch
from torch.profiler import record_function

from lmdeq.bench import speedup
from lmdeq.bench.profile import PHASES, profile_step
from lmdeq.deq import deq_solve


def test_phases_rest_and_top_operators():
    a = torch.randn(192, 192)

    def step():
        with record_function("lmdeq::forward_solve"):
            for _ in range(20):
                a @ a
        with record_function("bench::optimizer_step"):
            a.sin()
        a.cos()  # in no phase

    p = profile_step(step, torch.device("cpu"), top=3)
    assert p["clock"] == "host" and p["busy_ms"] == p["wall_ms"] > 0
    phases = p["phases_ms"]
    assert set(phases) == set(PHASES.values()) | {"rest"}
    assert phases["forward solve"] > 0 and phases["optimizer step"] > 0
    assert phases["adjoint solve"] == phases["tracked f(z*)"] == phases["constraint upkeep"] == 0.0
    assert phases["rest"] == pytest.approx(p["busy_ms"] - sum(v for k, v in phases.items() if k != "rest"))
    ops = p["top_ops"]
    assert len(ops) == 3 and [o["self_ms"] for o in ops] == sorted((o["self_ms"] for o in ops), reverse=True)
    mm = next(o for o in ops if o["name"] in ("aten::mm", "aten::matmul"))
    assert mm["calls"] == 20
    assert not any(o["name"] in PHASES for o in ops)


def test_top_must_be_a_positive_int():
    with pytest.raises(ValueError, match="top must be a positive int"):
        profile_step(lambda: None, torch.device("cpu"), top=0)


def test_deq_solve_marks_its_three_parts():
    w = torch.nn.Parameter(0.3 * torch.eye(6))
    x = torch.randn(2, 6)

    def step():
        z, _ = deq_solve(lambda z: torch.tanh(z @ w + x), torch.zeros(2, 6), solver="fixed_point", max_iter=30,
                         tol=1e-8)
        z.sum().backward()

    p = profile_step(step, torch.device("cpu"))
    for phase in ("forward solve", "tracked f(z*)", "adjoint solve"):
        assert p["phases_ms"][phase] > 0, phase


def test_benchmark_reports_where_the_time_goes(tmp_path):
    result = speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, methods=("authors", "lmdeq"),
                         profile=True, out_dir=None, log=lambda m: None)
    for row in result["rows"]:
        phases = row["profile"]["phases_ms"]
        assert phases["forward solve"] > 0 and phases["adjoint solve"] > 0 and phases["optimizer step"] > 0
        assert phases["constraint upkeep"] > 0  # both Lipschitz variants keep their constraint
    assert "One profiled training step" in result["table"] and "top operators, init (c)" in result["table"]
    plain = speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, methods=("lmdeq",), out_dir=None,
                        log=lambda m: None)
    assert plain["rows"][0]["profile"] is None and "profiled" not in plain["table"]
