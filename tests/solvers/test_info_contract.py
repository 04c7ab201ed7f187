"""lmdeq's info layout: tensor-only info, max_iter=0, step counting, outcome codes; and the options of the
function contract (lmdeq.integrations.torchdeq_solvers.LMDEQ_SOLVERS)."""
import warnings

import numpy as np
import pytest
import torch

from lmdeq.integrations import torchdeq_solvers as contract
from lmdeq.integrations.torchdeq_solvers import LMDEQ_SOLVERS, UnknownOptionWarning
from lmdeq.solvers import SOLVERS, Anderson, Broyden, Result, SolverInfo, result_of

from .problems import split_state, tanh_contraction

NAMES = ["fixed_point", "anderson", "broyden"]


class Counting:
    """A contraction that counts its evaluations."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, z):
        self.calls += 1
        return self.f(z)


def _residual(f, z):
    return (f(z) - z).flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("state", ["tensor", "list"])
def test_max_iter_zero_returns_x0_without_evaluating(name, state):
    f_flat, z0, _, _ = tanh_contraction(6, 3, 0.5, seed=1)
    z0 = z0 + 0.25
    if state == "list":
        f = Counting(split_state(f_flat, [2, 4], [(3, 2), (3, 4)]))
        x0 = [z0[:, :2].clone(), z0[:, 2:].clone()]
    else:
        f, x0 = Counting(f_flat), z0
    z, traj, info = SOLVERS[name](max_iter=0, tol=1e-3).run(f, x0, snapshots=[0, 1])
    assert f.calls == 0
    parts = [z] if state == "tensor" else z
    for got, want in zip(parts, [x0] if state == "tensor" else x0):
        assert torch.equal(got, want)
    assert len(traj) == 2  # nothing to index beyond x0: both entries are x0
    # Zero steps: the residual of x0 was never measured, so it counts as not converged.
    assert info.f_evals == 0 and info.result == Result.MAX_ITER and not bool(info.converged.any())
    assert torch.isinf(info["abs_lowest"]).all() and torch.isinf(info["rel_lowest"]).all()
    assert torch.equal(info["nstep"], torch.zeros(3))
    width = 1 if name == "broyden" else 0  # Broyden's x0 column, unmeasured
    assert info["abs_trace"].shape == info["rel_trace"].shape == (3, width)


@pytest.mark.parametrize("name", NAMES)
def test_iterations_zero_is_max_iter_zero(name):
    f, z0, _, _ = tanh_contraction(5, 2, 0.5, seed=2)
    z, _, info = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0 + 1.0, iterations=0)
    assert torch.equal(z, z0 + 1.0) and info.f_evals == 0
    solution = SOLVERS[name](max_iter=0, exact=True).solve(f, z0 + 1.0)
    assert torch.equal(solution.value, z0 + 1.0) and solution.stats.f_evals == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("max_iter", [torch.tensor(5), np.int64(5), 5.0])
def test_tensor_numpy_and_integral_float_max_iter(name, max_iter):
    f, z0, _, _ = tanh_contraction(8, 2, 0.9, seed=3)
    ref = SOLVERS[name](max_iter=5, tol=1e-30).solve(f, z0)
    solver = SOLVERS[name](max_iter=max_iter, tol=1e-30)
    assert type(solver.max_iter) is int and solver == SOLVERS[name](max_iter=5, tol=1e-30)
    solution = solver.solve(f, z0)
    assert torch.equal(solution.value, ref.value) and solution.stats.f_evals == ref.stats.f_evals
    assert solution.stats["abs_trace"].shape == ref.stats["abs_trace"].shape
    # The function contract takes them too (TorchDEQ's cores pass tensors and floats).
    z, _, info = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, max_iter=max_iter, tol=1e-30)
    assert torch.equal(z, ref.value) and info.f_evals == ref.stats.f_evals
    assert info["abs_trace"].shape == ref.stats["abs_trace"].shape


@pytest.mark.parametrize("k", [1, 2, 5])
def test_broyden_max_iter_counts_updates(k):
    f = Counting(tanh_contraction(10, 3, 0.9, seed=4)[0])
    z0 = torch.zeros(3, 10, dtype=torch.float64)
    solution = Broyden(max_iter=k, tol=1e-30, exact=True).solve(f, z0)
    z, info = solution.value, solution.stats
    assert f.calls == k + 1 and info.f_evals == k + 1  # g(x0), then one per update
    assert torch.equal(info["nstep"], torch.full((3,), float(k)))
    # One update already improves on x0 (the first Broyden step is a Picard step).
    assert bool((_residual(f.f, z) < _residual(f.f, z0)).all())
    if k > 1:
        z_fewer = Broyden(max_iter=k - 1, tol=1e-30, exact=True).solve(f.f, z0).value
        assert bool((_residual(f.f, z) < _residual(f.f, z_fewer)).all())
    # return_final=True of the function contract returns the same last iterate.
    z_fn, _, info_fn = LMDEQ_SOLVERS["lmdeq_broyden"](f.f, z0, max_iter=k, tol=1e-30, return_final=True)
    assert torch.equal(z_fn, z) and torch.equal(info_fn["nstep"], info["nstep"])


def test_broyden_records_x0_and_stops_when_it_is_already_a_fixed_point():
    f, z0, _, _ = tanh_contraction(6, 2, 0.5, seed=5)
    z_star = Anderson(max_iter=100, tol=1e-13).solve(f, z0).value
    counted = Counting(f)
    solution = Broyden(max_iter=20, tol=1e-6).solve(counted, z_star)
    z, info = solution.value, solution.stats
    assert counted.calls == 1 and info.f_evals == 1 and info.result == "converged"
    assert torch.equal(info["nstep"], torch.zeros(2)) and torch.equal(z, z_star)


@pytest.mark.parametrize("name", NAMES)
def test_info_is_tensors_only_and_generic_consumers_work(name):
    f, z0, _, _ = tanh_contraction(8, 3, 0.8, seed=6)
    info = SOLVERS[name](max_iter=30, tol=1e-6).solve(f, z0).stats
    assert isinstance(info, SolverInfo)
    assert all(torch.is_tensor(v) and v.is_floating_point() for v in info.values())
    logged = {k: v.mean().item() for k, v in info.items()}
    assert logged["converged"] == 1.0 and logged["result"] == Result.CONVERGED.code
    assert logged["f_evals"] == info.f_evals


@pytest.mark.parametrize("name", NAMES)
def test_infos_of_two_batches_merge_along_dim0(name):
    # Two batches that stop after different step counts still merge value by value (DataParallel's gather).
    f_a, z_a, _, _ = tanh_contraction(8, 2, 0.05, seed=7)
    f_b, z_b, _, _ = tanh_contraction(40, 3, 0.99, seed=8)
    solver = SOLVERS[name](max_iter=8, tol=1e-4)
    a, b = solver.solve(f_a, z_a).stats, solver.solve(f_b, z_b).stats
    assert a.f_evals < b.f_evals
    merged = type(a)((k, torch.cat([a[k], b[k]])) for k in a)
    assert merged["abs_trace"].shape[0] == merged["converged"].shape[0] == 5
    assert merged["f_evals"].tolist() == [a.f_evals, b.f_evals]
    # The worst outcome of the merged solves is the merge's outcome; the typed views still work.
    assert merged.result == result_of(dict(merged)) == Result.MAX_ITER and a.result == Result.CONVERGED
    assert merged.converged.tolist() == a.converged.tolist() + b.converged.tolist()


def test_result_codes_and_helpers():
    assert [r.code for r in Result] == [0, 1, 2, 3]
    assert Result.from_code(torch.tensor([0.0, 3.0, 1.0])) is Result.NONFINITE
    assert Result.from_code(2) is Result.DIVERGED and Result.CONVERGED == "converged"
    with pytest.raises(ValueError, match="code must be one of"):
        Result.from_code(7)
    with pytest.raises(KeyError, match="no 'result'"):
        result_of({"abs_lowest": torch.zeros(2)})
    with pytest.raises(KeyError, match="info.extras"):
        SolverInfo(abs_lowest=torch.zeros(2)).result


def test_unknown_option_warns_once_with_a_suggestion(monkeypatch):
    monkeypatch.setattr(contract, "_reported", set())
    f, z0, _, _ = tanh_contraction(6, 2, 0.5, seed=9)
    anderson, broyden, fixed_point = (LMDEQ_SOLVERS[f"lmdeq_{n}"] for n in ("anderson", "broyden", "fixed_point"))
    with pytest.warns(UnknownOptionWarning, match=r"'mm'.*did you mean 'm'\?") as caught:
        anderson(f, z0, max_iter=10, mm=3)
    assert [w.filename for w in caught] == [__file__]   # the warning points at the solver's caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        anderson(f, z0, max_iter=10, mm=3)           # once per process
        broyden(f, z0, max_iter=3, m=6, lam=1e-3)     # other solvers' options: quiet
        fixed_point(f, z0, max_iter=3, LBFGS_thres=4, ls=False, memory=2)
    with pytest.warns(UnknownOptionWarning, match="'tolerance'") as caught:
        fixed_point(f, z0, max_iter=3, tolerance=1e-4)
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(UnknownOptionWarning, match="simple_fixed_point_iter got solver option 'tolerence'"):
        contract.simple_fixed_point_iter(f, z0, max_iter=3, tolerence=1e-4)
    # A solver object has fields, not options: an unknown one is an error, not a warning.
    with pytest.raises(TypeError, match="mm"):
        Anderson(max_iter=10, mm=3)


def test_broyden_line_search_is_reported_not_silently_dropped(monkeypatch):
    monkeypatch.setattr(contract, "_reported", set())
    f, z0, _, _ = tanh_contraction(6, 2, 0.5, seed=10)
    with pytest.warns(UserWarning, match="ls=True") as caught:
        LMDEQ_SOLVERS["lmdeq_broyden"](f, z0, max_iter=3, ls=True)
    assert [w.filename for w in caught] == [__file__]


def test_every_solver_field_is_a_known_option():
    # configs share one solver_kwargs between solvers: a field of any lmdeq solver is never reported as unknown
    import dataclasses

    for cls in SOLVERS.values():
        assert {f.name for f in dataclasses.fields(cls)} <= contract.KNOWN_OPTIONS, cls
    assert {"indexing", "return_final", "iterations", "LBFGS_thres", "ls"} <= contract.KNOWN_OPTIONS
