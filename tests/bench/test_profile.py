"""The training-step profile: phases from lmdeq's and the benchmark's profiler ranges, their backward passes
(through autograd's sequence numbers), the rest, operator classes and the top operators (host clock on
CPU)."""
import pytest
import torch
from torch.profiler import record_function

from lmdeq.app.bench import speedup
from lmdeq.app.bench.profile import OP_CLASSES, PHASES, marked_modules, op_class, profile_step
from lmdeq.deq import deq_solve
from lmdeq.solvers import FixedPoint


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
    assert p["clock"] == "host" and 0 < p["busy_ms"] <= p["wall_ms"]
    phases = p["phases_ms"]
    assert set(phases) == set(PHASES.values()) | {"rest"}   # no backward ran: no '<phase> backward'
    assert phases["forward solve"] > 0 and phases["optimizer step"] > 0 and phases["rest"] > 0
    assert phases["adjoint solve"] == phases["tracked f(z*)"] == phases["constraint upkeep"] == 0.0
    assert sum(phases.values()) == pytest.approx(p["busy_ms"])
    classes = p["op_classes_ms"]
    assert list(classes) == list(OP_CLASSES) and sum(classes.values()) == pytest.approx(p["busy_ms"])
    assert classes["matrix product"] > 0 and classes["convolution"] == 0.0
    ops = p["top_ops"]
    assert len(ops) == 3 and [o["self_ms"] for o in ops] == sorted((o["self_ms"] for o in ops), reverse=True)
    mm = next(o for o in ops if o["name"] in ("aten::mm", "aten::matmul"))
    assert mm["calls"] == 20
    assert not any(o["name"] in PHASES for o in ops)


def test_backward_work_is_counted_to_the_phase_whose_forward_recorded_it():
    # The head's backward multiplies a 2048 x 64 by a 64 x 2048 matrix (268 M multiply-adds); the loss's
    # backward touches 131 k elements: the comparison below checks attribution, with a wide margin.
    w = torch.nn.Parameter(torch.randn(2048, 2048))
    x = torch.randn(64, 2048)

    def step():
        with record_function("bench::head"):
            y = torch.tanh(x @ w)
        with record_function("bench::loss"):
            loss = y.square().sum()
        loss.backward()

    phases = profile_step(step, torch.device("cpu"))["phases_ms"]
    assert phases["head backward"] > 0 and phases["loss backward"] > 0
    assert "stem backward" not in phases   # the stem recorded nothing


def test_top_must_be_a_positive_int():
    with pytest.raises(ValueError, match="top must be an int >= 1"):
        profile_step(lambda: None, torch.device("cpu"), top=0)


def test_deq_solve_marks_its_three_parts_and_the_gradient_through_f():
    w = torch.nn.Parameter(0.3 * torch.eye(6))
    x = torch.randn(2, 6)

    def step():
        z, _ = deq_solve(lambda z: torch.tanh(z @ w + x), torch.zeros(2, 6), solver=FixedPoint(max_iter=30, tol=1e-8))
        z.sum().backward()

    p = profile_step(step, torch.device("cpu"))
    for phase in ("forward solve", "tracked f(z*)", "adjoint solve", "tracked f(z*) backward"):
        assert p["phases_ms"][phase] > 0, phase


def test_marked_modules_name_a_forward_pass_and_remove_their_hooks():
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(2, 3, 16, 16)
    with marked_modules([("bench::stem", conv)]):
        p = profile_step(lambda: conv(x).sum().backward(), torch.device("cpu"))
    assert p["phases_ms"]["stem"] > 0 and p["phases_ms"]["stem backward"] > 0
    assert p["op_classes_ms"]["convolution"] > 0
    assert not conv._forward_hooks and not conv._forward_pre_hooks


@pytest.mark.parametrize("name, cls", [("aten::mkldnn_convolution", "convolution"),
                                       ("aten::convolution_backward", "convolution"),
                                       ("aten::native_batch_norm_backward", "batch norm"),
                                       ("aten::bmm", "matrix product"), ("aten::copy_", "copy"),
                                       ("aten::addcmul", "other operators"),
                                       ("lmdeq_C::fixed_point_update_multi", "other operators"),
                                       ("lmdeq::forward_solve", "framework"),
                                       ("autograd::engine::evaluate_function: MulBackward0", "framework"),
                                       ("Optimizer.step#Adam.step", "framework")])
def test_operator_classes(name, cls):
    assert op_class(name) == cls


def test_benchmark_reports_where_the_time_goes(tmp_path):
    result = speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, methods=("authors", "lmdeq"),
                         profile=True, out_dir=None, log=lambda m: None)
    for row in result["rows"]:
        phases = row["profile"]["phases_ms"]
        for phase in ("stem", "stem backward", "forward solve", "tracked f(z*)", "tracked f(z*) backward",
                      "head", "head backward", "adjoint solve", "optimizer step", "constraint upkeep"):
            assert phases[phase] > 0, phase   # both Lipschitz variants keep their constraint
        assert sum(phases.values()) == pytest.approx(row["profile"]["busy_ms"])
    text = result["table"]
    assert "One profiled training step" in text and "top operators, init (c)" in text
    assert "| head backward |" in text and "| other operators |" in text and "%)" in text
    plain = speedup.run(preset="cifar10-small", batch=2, steps=1, warmup=0, methods=("lmdeq",), out_dir=None,
                        log=lambda m: None)
    assert plain["rows"][0]["profile"] is None and "profiled" not in plain["table"]


def test_profile_table_keeps_columns_apart_even_with_equal_labels():
    def prof(ms):
        return {"clock": "host", "wall_ms": 2 * ms, "busy_ms": ms, "phases_ms": {"forward solve": ms, "rest": 0.0},
                "op_classes_ms": {c: 0.0 for c in OP_CLASSES}, "top_ops": []}

    rows = [{"weights": "init", "label": "(c)", "profile": prof(10.0)},
            {"weights": "init", "label": "(c)", "profile": prof(20.0)}]
    text = speedup.profile_table(rows)
    assert "| forward solve | 10 (100%) | 20 (100%) |" in text and "| wall / busy | 20 / 10 | 40 / 20 |" in text
