"""A-priori iteration counts, sync-free modes, damping and non-finite handling."""
import math

import pytest
import torch

from lmdeq import solvers
from lmdeq.solvers import iterations_for
from lmdeq.solvers.tracking import Tracker

from .problems import linear_contraction, tanh_contraction


@pytest.mark.parametrize("L", [0.3, 0.7, 0.95])
@pytest.mark.parametrize("tau", [1.0, 0.6])
@pytest.mark.parametrize("shape", [(2, 10), (1, 3, 4, 4)])
def test_iterations_for_is_exact_on_linear_contractions(L, tau, shape):
    # For f = L Q z + b (Q orthogonal) the damped residuals shrink by exactly q = 1 - tau + tau L
    # per step... only when tau = 1 (with tau < 1 they shrink by at most q), so the count must suffice,
    # and for tau = 1 one step fewer must not.
    f, z0 = linear_contraction(shape, L, seed=7)
    r0 = float((f(z0) - z0).reshape(shape[0], -1).norm(dim=1).max())
    tol = 1e-6 * r0
    n = iterations_for(L, tol, r0, tau=tau)
    z, _, info = solvers.fixed_point(f, z0, iterations=n, tau=tau, tol=tol)
    res = float((f(z) - z).reshape(shape[0], -1).norm(dim=1).max())
    assert res <= tol * (1 + 1e-9)
    assert info.f_evals == n
    if tau == 1.0 and n > 1:
        z_short, _, _ = solvers.fixed_point(f, z0, iterations=n - 1, tol=tol)
        res_short = float((f(z_short) - z_short).reshape(shape[0], -1).norm(dim=1).max())
        assert res_short > tol


def test_iterations_for_on_nonlinear_contraction_holds():
    f, z0, _, _ = tanh_contraction(32, 3, 0.8, seed=8)
    r0 = float((f(z0) - z0).norm(dim=1).max())
    n = iterations_for(0.8, 1e-8, r0)
    z, _, _ = solvers.fixed_point(f, z0, iterations=n, tol=1e-8)
    assert float((f(z) - z).norm(dim=1).max()) <= 1e-8


@pytest.mark.parametrize("bad", [dict(lipschitz=1.0), dict(lipschitz=-0.1), dict(tol=0.0), dict(r0=float("inf")),
                                 dict(tau=0.0), dict(tau=1.5)])
def test_iterations_for_bad_arguments(bad):
    kw = dict(lipschitz=0.5, tol=1e-3, r0=1.0)
    kw.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        iterations_for(**kw)


def test_iterations_for_formula():
    assert iterations_for(0.5, 1e-3, 1.0) == math.ceil(math.log(1e-3) / math.log(0.5))
    assert iterations_for(0.5, 2.0, 1.0) == 1


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "broyden"])
def test_iterations_mode_reads_nothing_back(name, monkeypatch):
    reads = []
    monkeypatch.setattr(Tracker, "should_stop", lambda self: reads.append(1) or False)
    f, z0, _, _ = tanh_contraction(12, 2, 0.5, seed=9)
    z, _, info = solvers.get_solver(name)(f, z0, iterations=7, tol=1e-3)
    assert reads == [] and info.f_evals == (8 if name == "broyden" else 7)   # Broyden: g(x0) + 7 updates
    # The outcome is computed on the device all the same (read here, after the solve).
    assert info.converged.dtype == torch.bool and info.result == "converged"


@pytest.mark.parametrize("check_every", [1, 3, 5])
def test_check_every_bounds_host_reads(check_every, monkeypatch):
    reads = []
    original = Tracker.should_stop

    def counting(self):
        out = original(self)
        if self.records % self.check_every == 0:
            reads.append(self.records)
        return out

    monkeypatch.setattr(Tracker, "should_stop", counting)
    f, z0, _, _ = tanh_contraction(12, 2, 0.9, seed=9)
    _, _, info = solvers.fixed_point(f, z0, max_iter=40, tol=1e-30, check_every=check_every)
    assert len(reads) == 40 // check_every
    assert all(s % check_every == 0 for s in reads)


def test_iterations_mode_matches_checked_mode():
    f, z0, _, _ = tanh_contraction(20, 3, 0.7, seed=10)
    _, _, info = solvers.fixed_point(f, z0, max_iter=200, tol=1e-9, return_final=True)
    z_checked, _, _ = solvers.fixed_point(f, z0, max_iter=info.f_evals, tol=1e-30, return_final=True)
    z_free, _, _ = solvers.fixed_point(f, z0, iterations=info.f_evals, tol=1e-9)
    assert torch.equal(z_checked, z_free)


def test_damping_converges_where_plain_iteration_oscillates():
    # f(z) = -z + 2 (fixed point 1): Picard oscillates forever, tau = 0.5 lands in one step.
    f = lambda z: -z + 2.0  # noqa: E731
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    _, _, plain = solvers.fixed_point(f, z0, max_iter=20, tol=1e-8)
    z, _, damped = solvers.fixed_point(f, z0, max_iter=20, tol=1e-8, tau=0.5)
    assert plain.result == "max_iter" and damped.result == "converged"
    assert torch.allclose(z, torch.ones_like(z))


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "broyden"])
def test_nonfinite_f_is_flagged(name):
    def f(z):
        out = 0.5 * z + 1.0
        out[1] = float("nan")
        return out

    z0 = torch.zeros(3, 4, dtype=torch.float64)
    _, _, info = solvers.get_solver(name)(f, z0, max_iter=60, tol=1e-6)
    assert info.result == "nonfinite"
    assert info.converged.tolist() == [True, False, True]
    with pytest.raises(solvers.SolverError, match="nonfinite"):
        solvers.get_solver(name)(f, z0, max_iter=20, tol=1e-6, raise_on_failure=True)


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "broyden"])
def test_nonfinite_x0_is_flagged(name):
    z0 = torch.zeros(2, 4)
    z0[0, 1] = float("inf")
    _, _, info = solvers.get_solver(name)(lambda z: 0.5 * z, z0, max_iter=10, tol=1e-6)
    assert info.result == "nonfinite"


def test_anderson_survives_singular_gram():
    # A constant map: after one step every residual is zero, the Gram matrix is singular.
    c = torch.randn(2, 5, dtype=torch.float64)
    z, _, info = solvers.anderson(lambda z: c.clone(), torch.zeros(2, 5, dtype=torch.float64), max_iter=10,
                                  tol=1e-30, m=4, lam=0.0)
    assert torch.isfinite(z).all() and torch.equal(z, c)
    assert info.result in ("converged", "max_iter")


def test_anderson_ill_conditioned_history_stays_finite():
    # Nearly collinear residuals (a map that barely moves along one direction).
    d = torch.randn(1, 30, dtype=torch.float64)
    f = lambda z: 0.999999 * z + 1e-3 * d  # noqa: E731
    z, _, info = solvers.anderson(f, torch.zeros(1, 30, dtype=torch.float64), max_iter=50, tol=1e-9, m=6)
    assert torch.isfinite(z).all() and info.result != "nonfinite"


def test_broyden_workspace_does_not_grow_with_max_iter(monkeypatch):
    sizes = []
    real_zeros = torch.zeros

    def spy(*shape, **kw):
        out = real_zeros(*shape, **kw)
        if out.dim() == 3:  # the (B, memory, n) workspace; the (B, steps) traces grow with max_iter by design
            sizes.append(out.numel())
        return out

    f, z0, _, _ = tanh_contraction(50, 2, 0.99, seed=11)
    monkeypatch.setattr(torch, "zeros", spy)
    solvers.broyden(f, z0, max_iter=20, tol=1e-30, memory=4)
    small = max(sizes)
    sizes.clear()
    solvers.broyden(f, z0, max_iter=200, tol=1e-30, memory=4)
    assert max(sizes) == small


@pytest.mark.parametrize("shape", [(), (5,)])
def test_scalar_and_vector_states_follow_torchdeq(shape):
    x0 = torch.zeros(shape, dtype=torch.float64)
    z, _, info = solvers.anderson(torch.cos, x0, max_iter=50, tol=1e-10)
    assert z.shape == x0.shape
    assert torch.allclose(z, torch.full(shape, 0.7390851332151607, dtype=torch.float64), atol=1e-9)
    assert info["abs_lowest"].shape == ((1,) if shape == () else shape)


def test_non_contiguous_x0():
    f, _, _, _ = tanh_contraction(6, 4, 0.5, seed=12)
    base = torch.zeros(6, 4, dtype=torch.float64)
    z, _, info = solvers.fixed_point(f, base.t(), max_iter=100, tol=1e-10)
    assert info.result == "converged" and z.shape == (4, 6)
