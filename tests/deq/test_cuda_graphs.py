"""CUDA-graphed solves (deq_solve(graph=...)) equal the eager fixed-count solves.

On the CPU a test double (graph_double.RerunCall) stands in for the CUDA graph: it checks the plumbing
(static inputs, bind, info through outputs, capture once and replay with new inputs). The `gpu` tests
run the real capture.
"""
from contextlib import contextmanager

import pytest
import torch

from lmdeq import cuda_graphs, deq_solve
from lmdeq.cuda_graphs import GraphCache
from lmdeq.deq import GraphedProblem, Implicit
from lmdeq.ops import backends
from lmdeq.solvers import SOLVERS, FixedPoint

from .graph_double import RerunCall


def _problem(device, dtype, seed=0, n=12, batch=3, L=0.7):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = (L * W / torch.linalg.matrix_norm(W, 2)).to(device, dtype).requires_grad_()
    return W


def _x(device, dtype, seed, batch=3, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()


def _graphed(cache, W, x, state="tensor"):
    @contextmanager
    def bind(static):
        if state == "list":
            half = x.shape[1] // 2
            yield lambda z: list(torch.tanh(torch.cat(z, 1) @ W.T + static[0]).split(half, 1))
        else:
            yield lambda z: torch.tanh(z @ W.T + static[0])

    return GraphedProblem(cache, ("tanh", W.data_ptr()), [x], bind)


def _solve_and_grads(W, x, graph, state="tensor", solver="fixed_point"):
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    z0 = torch.zeros_like(x).detach()
    if state == "list":
        half = x.shape[1] // 2
        f_list = lambda z: list(torch.tanh(torch.cat(z, 1) @ W.T + x).split(half, 1))  # noqa: E731
        z, info = deq_solve(f_list, list(z0.split(half, 1)), solver=FixedPoint(max_iter=30, exact=True),
                            backward=Implicit(solver=FixedPoint(max_iter=30, tol=1e-6, exact=True)), graph=graph)
        z = torch.cat(z, 1)
    else:
        z, info = deq_solve(f, z0, solver=SOLVERS[solver](max_iter=30, exact=True),
                            backward=Implicit(solver=SOLVERS[solver](max_iter=30, tol=1e-6, exact=True)), graph=graph)
    loss = (z ** 2).sum() + z.sin().sum()
    gW, gx = torch.autograd.grad(loss, (W, x))
    return z.detach(), info, gW, gx


def _graphed_flag(info):
    """Whether the solve was a graph replay (True/False), or None for a solve that was not graph-eligible
    (the SolverInfo's cuda_graph attribute)."""
    return getattr(info, "cuda_graph", None)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("state", ["tensor", "list"])
def test_graphed_solves_equal_eager_and_replay_new_inputs(state):
    cache = GraphCache(call_type=RerunCall)
    W = _problem("cpu", torch.float64)
    for seed in (1, 2, 3):  # the first call captures; the others replay with new inputs x
        x = _x("cpu", torch.float64, seed)
        z_g, info_g, gW_g, gx_g = _solve_and_grads(W, x, _graphed(cache, W, x, state), state)
        z_e, info_e, gW_e, gx_e = _solve_and_grads(W, x, None, state)
        assert info_g.cuda_graph is True and not hasattr(info_e, "cuda_graph")
        assert _rel(z_g, z_e) < 1e-12
        assert _rel(gW_g, gW_e) < 1e-12 and _rel(gx_g, gx_e) < 1e-12
        assert torch.equal(info_g["rel_lowest"], info_e["rel_lowest"])
        assert info_g["f_evals"] == info_e["f_evals"] == 30 and info_g["result"] == info_e["result"]
    assert cache.captures == 2 and cache.replays == 6  # forward + adjoint, each captured once


def test_checked_solves_are_not_graphed():
    cache = GraphCache(call_type=RerunCall)
    W = _problem("cpu", torch.float64)
    x = _x("cpu", torch.float64, 1)
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    z, info = deq_solve(f, torch.zeros_like(x).detach(), solver=FixedPoint(max_iter=30, tol=1e-8),
                        backward=Implicit(solver=FixedPoint(max_iter=30, tol=1e-6)), graph=_graphed(cache, W, x))
    z.sum().backward()
    assert not hasattr(info, "cuda_graph") and len(cache) == 0


@pytest.mark.gpu
def test_cuda_graphed_solves_equal_eager_on_gpu():
    cache = GraphCache()
    W = _problem("cuda", torch.float32)
    for seed in (1, 2):
        x = _x("cuda", torch.float32, seed)
        z_g, info_g, gW_g, gx_g = _solve_and_grads(W, x, _graphed(cache, W, x))
        z_e, _, gW_e, gx_e = _solve_and_grads(W, x, None)
        assert info_g.cuda_graph is True
        assert _rel(z_g, z_e) < 1e-5 and _rel(gW_g, gW_e) < 1e-5 and _rel(gx_g, gx_e) < 1e-5
    assert cache.captures == 2 and cache.replays == 4 and not cache.failures


@pytest.mark.skipif(backends.unavailable_reason("cpu", "cpu") is not None, reason="lmdeq._C not built")
def test_changing_the_op_backend_captures_again(monkeypatch):
    """A replay runs the kernels captured with it: a new backend (LMDEQ_BACKEND) needs new captures."""
    cache = GraphCache(call_type=RerunCall)
    W = _problem("cpu", torch.float64)
    x = _x("cpu", torch.float64, 1)
    monkeypatch.setenv("LMDEQ_BACKEND", "torch")
    _solve_and_grads(W, x, _graphed(cache, W, x))
    _solve_and_grads(W, x, _graphed(cache, W, x))
    assert cache.captures == 2 and cache.replays == 4  # forward + adjoint, replayed
    monkeypatch.setenv("LMDEQ_BACKEND", "cpu")
    z_g, info, _, _ = _solve_and_grads(W, x, _graphed(cache, W, x))
    assert cache.captures == 4 and _graphed_flag(info) is True
    assert _rel(z_g, _solve_and_grads(W, x, None)[0]) < 1e-12


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_only_fixed_point_solves_are_graphed(solver):
    """Anderson and Broyden (dense solves inside) stay eager even with a fixed count and a graph."""
    cache = GraphCache(call_type=RerunCall)
    W = _problem("cpu", torch.float64)
    x = _x("cpu", torch.float64, 1)
    z_g, info_g, gW_g, _ = _solve_and_grads(W, x, _graphed(cache, W, x), solver=solver)
    z_e, _, gW_e, _ = _solve_and_grads(W, x, None, solver=solver)
    assert _graphed_flag(info_g) is None and len(cache) == 0 and cache.captures == 0
    assert _rel(z_g, z_e) < 1e-12 and _rel(gW_g, gW_e) < 1e-12


class _FailingCall:
    """A capture that fails like a non-capturable computation (e.g. a host sync inside)."""

    @staticmethod
    def supports(device) -> bool:
        return True

    def __init__(self, fn, inputs, device):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_failed_capture_runs_eagerly_and_turns_graphs_off(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_disabled", None)  # restored after the test
    cache = GraphCache(call_type=_FailingCall)
    W = _problem("cpu", torch.float64)
    x = _x("cpu", torch.float64, 1)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        z_g, info_g, gW_g, _ = _solve_and_grads(W, x, _graphed(cache, W, x))
    z_e, _, gW_e, _ = _solve_and_grads(W, x, None)
    assert _graphed_flag(info_g) is False and cache.failures and cache.replays == 0
    assert _rel(z_g, z_e) < 1e-12 and _rel(gW_g, gW_e) < 1e-12
    # the adjoint did not try again (graphs are off for the process), nor does another cache
    assert len(cache.failures) == 1 and "not permitted" in cuda_graphs.disabled_reason()
    other = GraphCache(call_type=RerunCall)
    _, info, _, _ = _solve_and_grads(W, x, _graphed(other, W, x))
    assert _graphed_flag(info) is None and other.captures == 0
