"""A-priori iteration counts, sync-free modes, damping and non-finite handling."""
import math

import pytest
import torch

from lmdeq.integrations.torchdeq_solvers import LMDEQ_SOLVERS
from lmdeq.solvers import SOLVERS, Anderson, Broyden, FixedPoint, SolverError, iterations_for
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
    solution = FixedPoint(max_iter=n, exact=True, tau=tau, tol=tol).solve(f, z0)
    z = solution.value
    res = float((f(z) - z).reshape(shape[0], -1).norm(dim=1).max())
    assert res <= tol * (1 + 1e-9)
    assert solution.stats.f_evals == n
    if tau == 1.0 and n > 1:
        z_short = FixedPoint(max_iter=n - 1, exact=True, tol=tol).solve(f, z0).value
        res_short = float((f(z_short) - z_short).reshape(shape[0], -1).norm(dim=1).max())
        assert res_short > tol


def test_iterations_for_on_nonlinear_contraction_holds():
    f, z0, _, _ = tanh_contraction(32, 3, 0.8, seed=8)
    r0 = float((f(z0) - z0).norm(dim=1).max())
    n = iterations_for(0.8, 1e-8, r0)
    z = FixedPoint(max_iter=n, exact=True, tol=1e-8).solve(f, z0).value
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
@pytest.mark.parametrize("spelling", ["exact", "iterations="])
def test_iterations_mode_reads_nothing_back(name, spelling, monkeypatch):
    reads = []
    monkeypatch.setattr(Tracker, "should_stop", lambda self: reads.append(1) or False)
    f, z0, _, _ = tanh_contraction(12, 2, 0.5, seed=9)
    if spelling == "exact":
        info = SOLVERS[name](max_iter=7, exact=True, tol=1e-3).solve(f, z0).stats
    else:   # the function contract's spelling
        _, _, info = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, iterations=7, tol=1e-3)
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
    FixedPoint(max_iter=40, tol=1e-30, check_every=check_every).solve(f, z0)
    assert len(reads) == 40 // check_every
    assert all(s % check_every == 0 for s in reads)


def test_iterations_mode_matches_checked_mode():
    fixed_point = LMDEQ_SOLVERS["lmdeq_fixed_point"]
    f, z0, _, _ = tanh_contraction(20, 3, 0.7, seed=10)
    _, _, info = fixed_point(f, z0, max_iter=200, tol=1e-9, return_final=True)
    z_checked, _, _ = fixed_point(f, z0, max_iter=info.f_evals, tol=1e-30, return_final=True)
    z_free, _, _ = fixed_point(f, z0, iterations=info.f_evals, tol=1e-9)
    assert torch.equal(z_checked, z_free)
    # the solver object's spelling of iterations=N
    z_exact = FixedPoint(max_iter=info.f_evals, exact=True, tol=1e-9).solve(f, z0).value
    assert torch.equal(z_exact, z_free)


def test_damping_converges_where_plain_iteration_oscillates():
    # f(z) = -z + 2 (fixed point 1): Picard oscillates forever, tau = 0.5 lands in one step.
    f = lambda z: -z + 2.0  # noqa: E731
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    plain = FixedPoint(max_iter=20, tol=1e-8).solve(f, z0).stats
    solution = FixedPoint(max_iter=20, tol=1e-8, tau=0.5).solve(f, z0)
    z, damped = solution.value, solution.stats
    assert plain.result == "max_iter" and damped.result == "converged"
    assert torch.allclose(z, torch.ones_like(z))


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "broyden"])
def test_nonfinite_f_is_flagged(name):
    def f(z):
        out = 0.5 * z + 1.0
        out[1] = float("nan")
        return out

    z0 = torch.zeros(3, 4, dtype=torch.float64)
    info = SOLVERS[name](max_iter=60, tol=1e-6).solve(f, z0).stats
    assert info.result == "nonfinite"
    assert info.converged.tolist() == [True, False, True]
    with pytest.raises(SolverError, match="nonfinite"):
        SOLVERS[name](max_iter=20, tol=1e-6, raise_on_failure=True).solve(f, z0)


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "broyden"])
def test_nonfinite_x0_is_flagged(name):
    z0 = torch.zeros(2, 4)
    z0[0, 1] = float("inf")
    info = SOLVERS[name](max_iter=10, tol=1e-6).solve(lambda z: 0.5 * z, z0).stats
    assert info.result == "nonfinite"


def test_anderson_survives_singular_gram():
    # A constant map: after one step every residual is zero, the Gram matrix is singular.
    c = torch.randn(2, 5, dtype=torch.float64)
    solution = Anderson(max_iter=10, tol=1e-30, m=4, lam=0.0).solve(lambda z: c.clone(),
                                                                      torch.zeros(2, 5, dtype=torch.float64))
    z, info = solution.value, solution.stats
    assert torch.isfinite(z).all() and torch.equal(z, c)
    assert info.result in ("converged", "max_iter")


def test_anderson_ill_conditioned_history_stays_finite():
    # Nearly collinear residuals (a map that barely moves along one direction).
    d = torch.randn(1, 30, dtype=torch.float64)
    f = lambda z: 0.999999 * z + 1e-3 * d  # noqa: E731
    solution = Anderson(max_iter=50, tol=1e-9, m=6).solve(f, torch.zeros(1, 30, dtype=torch.float64))
    z, info = solution.value, solution.stats
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
    Broyden(max_iter=20, tol=1e-30, memory=4).solve(f, z0)
    small = max(sizes)
    sizes.clear()
    Broyden(max_iter=200, tol=1e-30, memory=4).solve(f, z0)
    assert max(sizes) == small


@pytest.mark.parametrize("shape", [(), (5,)])
def test_scalar_and_vector_states_follow_torchdeq(shape):
    x0 = torch.zeros(shape, dtype=torch.float64)
    solution = Anderson(max_iter=50, tol=1e-10).solve(torch.cos, x0)
    z, info = solution.value, solution.stats
    assert z.shape == x0.shape
    assert torch.allclose(z, torch.full(shape, 0.7390851332151607, dtype=torch.float64), atol=1e-9)
    assert info["abs_lowest"].shape == ((1,) if shape == () else shape)


def test_non_contiguous_x0():
    f, _, _, _ = tanh_contraction(6, 4, 0.5, seed=12)
    base = torch.zeros(6, 4, dtype=torch.float64)
    solution = FixedPoint(max_iter=100, tol=1e-10).solve(f, base.t())
    z, info = solution.value, solution.stats
    assert info.result == "converged" and z.shape == (4, 6)
