"""A solver's memory follows the solve, never max_iter (issue 28 item 5): max_iter=10**12 on a solve that
converges in a few steps allocates nothing of that size (traces of the measured steps, Broyden's ring grown as
updates are made), while budgets up to TRACE_PAD_LIMIT keep the padded, mergeable trace layout."""
import sys

import pytest
import torch

from lmdeq.integrations.torchdeq_solvers import TORCHDEQ_SOLVERS
from lmdeq.solvers import SOLVERS, Broyden, FixedPoint
from lmdeq.solvers.tracking import TRACE_PAD_LIMIT

from .problems import tanh_contraction

HUGE = 10 ** 12


def _problem():
    f, z0, _, _ = tanh_contraction(8, 3, 0.5, seed=5)
    return f, z0


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_huge_budget_allocates_only_what_the_solve_uses(name):
    f, z0 = _problem()
    solution = SOLVERS[name](max_iter=HUGE, tol=1e-8, stop_mode="rel").solve(f, z0)
    z, info = solution.value, solution.stats
    assert info.result == "converged"
    steps = info["abs_trace"].shape[1]
    assert 1 <= steps < 100 and steps == info["rel_trace"].shape[1]
    assert bool((f(z) - z).norm(dim=1).max() < 1e-6)


@pytest.mark.parametrize("name", ["fixed_point_iter", "broyden", "anderson"])
def test_a_huge_budget_under_torchdeqs_names(name):
    f, z0 = _problem()
    z, _, info = TORCHDEQ_SOLVERS[name](f, z0, max_iter=HUGE, tol=1e-8)   # broyden: LBFGS_thres=None keeps all
    assert info["abs_trace"].shape[1] < 100 and bool(info["abs_lowest"].max() < 1e-8)


def test_budgets_within_the_limit_keep_the_padded_layout():
    f, z0 = _problem()
    for budget in (50, TRACE_PAD_LIMIT):
        info = FixedPoint(max_iter=budget, tol=1e-8).solve(f, z0).stats
        assert info["abs_trace"].shape == (3, budget)
        assert info.f_evals < 50 and torch.equal(info["abs_trace"][:, -1], info["abs_lowest"])
    info = FixedPoint(max_iter=TRACE_PAD_LIMIT + 1, tol=1e-8).solve(f, z0).stats
    assert info["abs_trace"].shape == (3, info.f_evals)


def test_broyden_grows_its_ring_and_keeps_its_iterates(monkeypatch):
    # 89 updates, more than the first slots: the grown ring gives the iterates of a ring allocated whole
    module = sys.modules["lmdeq.solvers.broyden"]

    f, z0 = _problem()
    solver = Broyden(max_iter=90, tol=1e-30, memory=200)
    monkeypatch.setattr(module, "_FIRST_SLOTS", 4)
    a = solver.solve(f, z0)
    monkeypatch.setattr(module, "_FIRST_SLOTS", 1000)
    b = solver.solve(f, z0)
    assert torch.equal(a.value, b.value) and torch.equal(a.stats["abs_trace"], b.stats["abs_trace"])
