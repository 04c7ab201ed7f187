"""DEQ layer: implicit gradients equal autograd through many unrolled iterations."""
import pytest
import torch
from torch import nn

import lmdeq
from lmdeq import DEQ, JFB, Anderson, Broyden, FixedPoint, Implicit, Phantom, deq_solve
from lmdeq.deq import backward_from_config
from lmdeq.errors import ConfigError
from lmdeq.solvers import SOLVERS, solver_from_config

from ..solvers.problems import split_state


def _problem(seed=0, n=10, batch=3, L=0.8):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = (L * W / torch.linalg.matrix_norm(W, 2)).requires_grad_()
    x = torch.randn(batch, n, generator=g, dtype=torch.float64, requires_grad=True)
    return W, x


def _unrolled_grads(f, z0, params, steps=400):
    z = z0
    for _ in range(steps):
        z = f(z)
    loss = (z ** 2).sum() + z.sin().sum()
    return torch.autograd.grad(loss, params)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("solver,b_solver", [("anderson", "fixed_point"), ("broyden", "anderson"),
                                             ("fixed_point", "broyden")])
def test_implicit_matches_unrolled_tensor_state(solver, b_solver):
    W, x = _problem()
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    z0 = torch.zeros_like(x)
    z, info = deq_solve(f, z0, solver=SOLVERS[solver](max_iter=300, tol=1e-13),
                        backward=Implicit(solver=SOLVERS[b_solver](max_iter=400, tol=1e-13)))
    assert info.result == "converged"
    loss = (z ** 2).sum() + z.sin().sum()
    gW, gx = torch.autograd.grad(loss, [W, x])
    rW, rx = _unrolled_grads(f, z0, [W, x])
    assert _rel(gW, rW) < 1e-6 and _rel(gx, rx) < 1e-6


def test_implicit_matches_unrolled_list_state():
    W, x = _problem(seed=1, n=12)
    shapes = [(3, 2, 2, 2), (3, 4)]
    flat = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    f = split_state(flat, [8, 4], shapes)
    z0 = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    seen = []
    zs, _ = deq_solve(f, z0, solver=Anderson(max_iter=300, tol=1e-13),
                      backward=Implicit(solver=FixedPoint(tol=1e-13, max_iter=400)), on_backward=seen.append)
    loss = sum((z ** 2).sum() + z.sin().sum() for z in zs)
    gW, gx = torch.autograd.grad(loss, [W, x])
    z = z0
    for _ in range(400):
        z = f(z)
    rW, rx = torch.autograd.grad(sum((t ** 2).sum() + t.sin().sum() for t in z), [W, x])
    assert _rel(gW, rW) < 1e-6 and _rel(gx, rx) < 1e-6
    assert len(seen) == 1 and seen[0].result == "converged"


def test_gradcheck_small_instance():
    W, x = _problem(seed=2, n=4, batch=2, L=0.5)

    def fn(W, x):
        f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
        z, _ = deq_solve(f, torch.zeros_like(x), solver=Broyden(max_iter=100, tol=1e-14),
                         backward=Implicit(solver=FixedPoint(max_iter=200, tol=1e-14)))
        return z

    assert torch.autograd.gradcheck(fn, (W, x), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", [JFB(), Phantom(steps=6), backward_from_config({"method": "jfb"}),
                                  backward_from_config({"method": "phantom"})],
                         ids=["JFB", "Phantom", "jfb", "phantom"])
def test_jfb_and_phantom_run_and_point_downhill(mode):
    W, x = _problem(seed=3)
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    z, _ = deq_solve(f, torch.zeros_like(x), solver=Anderson(tol=1e-10, max_iter=200), backward=mode)
    loss = (z ** 2).sum() + z.sin().sum()
    gW, gx = torch.autograd.grad(loss, [W, x])
    rW, rx = _unrolled_grads(f, torch.zeros_like(x), [W, x])
    # Approximate gradients: finite, and positively aligned with the exact one.
    for g, r in ((gW, rW), (gx, rx)):
        assert torch.isfinite(g).all()
        assert float((g * r).sum()) > 0


def test_no_grad_and_none_modes_return_detached():
    W, x = _problem(seed=4)
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    for none in (backward_from_config({"method": "none"}), None):
        z, _ = deq_solve(f, torch.zeros_like(x), backward=none)
        assert not z.requires_grad
    with torch.no_grad():
        z, _ = deq_solve(f, torch.zeros_like(x))
    assert not z.requires_grad


def test_deq_module_gradients_reach_parameters_and_inputs():
    torch.manual_seed(0)

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6).double()
            with torch.no_grad():
                self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, 2))

        def forward(self, z, x):
            return torch.tanh(self.lin(z) + x)

    cell = Cell()
    deq = DEQ(cell, solver=Anderson(tol=1e-12, max_iter=100),
              backward=Implicit(solver=FixedPoint(tol=1e-12, max_iter=200)))
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    z, info = deq(torch.zeros(2, 6, dtype=torch.float64), x)
    z.sum().backward()
    assert cell.lin.weight.grad is not None and x.grad is not None
    assert deq.last_info is info
    assert list(deq.parameters())  # the wrapped module's parameters are registered


def test_bad_config():
    with pytest.raises(TypeError, match="unknown config key"):
        DEQ(lambda z, x: z, f_sovler="anderson")
    with pytest.raises(ValueError, match="backward must be"):
        deq_solve(lambda z: z, torch.zeros(1, 2), backward="ift")
    with pytest.raises(TypeError, match="Implicit: solver must be a Solver object"):
        Implicit(solver="newton")
    with pytest.raises(ConfigError, match="solver name must be one of"):
        solver_from_config({"name": "newton"})
    with pytest.raises(ValueError, match="Phantom: steps must be an int >= 1"):
        Phantom(steps=0)
    with pytest.raises(ValueError, match=r"Phantom: tau must be a number in \(0, 1\]"):
        Phantom(tau=0.0)
    with pytest.raises(ValueError, match="FixedPoint: tol must be a finite number > 0"):
        Implicit(solver=FixedPoint(tol=0.0))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        deq_solve(lambda z: z, torch.zeros(1, 2), b_tolerance=1e-3)
    with pytest.raises(TypeError, match="z0"):
        deq_solve(lambda z: z, "zeros")


def test_iterations_modes_run_without_checks():
    W, x = _problem(seed=5, L=0.5)
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731
    seen = []
    z, info = deq_solve(f, torch.zeros_like(x), solver=FixedPoint(max_iter=40, exact=True),
                        backward=Implicit(solver=FixedPoint(max_iter=40, tol=1e-6, exact=True)),
                        on_backward=seen.append)
    z.sum().backward()
    # Fixed counts, no read-back during the solves; the outcome is still recorded on the device.
    assert info.f_evals == 40 and info.result == lmdeq.solvers.Result.CONVERGED
    assert seen[0].f_evals == 40 and seen[0].result == "converged" and W.grad is not None
