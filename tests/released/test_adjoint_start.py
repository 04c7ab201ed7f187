"""Implicit(x0='zeros'): the adjoint solve started at 0, as the original MDEQ's and the Lipschitz-MDEQ
authors' released backward hooks start it, gives the implicit gradient of x0='v' (to the solve's
tolerance) and costs the released solver one more f-evaluation's worth of progress."""
import pytest
import torch

from lmdeq import Implicit, deq_solve
from lmdeq.solvers import SOLVERS, FixedPoint


def _problem():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(0.4 * torch.randn(6, 6, generator=g, dtype=torch.float64) / 6 ** 0.5)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    return w, (lambda z: torch.tanh(z @ w.T + x))


@pytest.mark.parametrize("b_solver", ["fixed_point", "authors_anderson"])
def test_zero_start_gives_the_implicit_gradient(b_solver):
    grads, evals = {}, {}
    for start in ("v", "zeros"):
        w, f = _problem()
        seen = []
        adjoint = SOLVERS[b_solver](max_iter=200, tol=1e-11, stop_mode="rel")
        z, _ = deq_solve(f, torch.zeros(3, 6, dtype=torch.float64), solver=FixedPoint(max_iter=200, tol=1e-12),
                         backward=Implicit(solver=adjoint, x0=start), on_backward=seen.append)
        (z ** 2).sum().backward()
        grads[start], evals[start] = w.grad.clone(), seen[0]["f_evals"]
    assert torch.allclose(grads["zeros"], grads["v"], rtol=1e-8, atol=1e-12)
    assert evals["zeros"] >= evals["v"]


def test_bad_x0():
    with pytest.raises(ValueError, match=r"Implicit: x0 must be one of \('v', 'zeros'\), got 'ones'"):
        Implicit(x0="ones")
