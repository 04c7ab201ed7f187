"""Solvers reach tolerance on contractions of known constant, agree with each other, and report."""
import pytest
import torch

from lmdeq.integrations.torchdeq_solvers import LMDEQ_SOLVERS, UnknownOptionWarning
from lmdeq.solvers import SOLVERS, Anderson, FixedPoint, Result, Solution, SolverError

from .problems import linear_contraction, split_state, tanh_contraction

NAMES = ["fixed_point", "anderson", "broyden"]
INFO_KEYS = {"abs_lowest", "rel_lowest", "abs_trace", "rel_trace", "nstep", "sradius", "converged", "result",
             "f_evals"}


def _residual(f, z):
    fz = f(z)
    if torch.is_tensor(z):
        return (fz - z).reshape(z.shape[0], -1).norm(dim=1)
    return torch.stack([(a - b).reshape(a.shape[0], -1).square().sum(1) for a, b in zip(fz, z)]).sum(0).sqrt()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(1, 7), (3, 2, 5, 5), (4, 33)])
def test_reaches_tolerance_tensor_state(name, dtype, tol, shape):
    f, z0 = linear_contraction(shape, 0.7, dtype=dtype, seed=len(shape))
    solver = SOLVERS[name](max_iter=200, tol=tol, stop_mode="abs")
    solution = solver.solve(f, z0)
    assert isinstance(solution, Solution)
    z, info = solution.value, solution.stats
    assert solution.result == info.result == Result.CONVERGED
    assert bool(info.converged.all()) and info.converged.dtype == torch.bool
    assert z.shape == z0.shape and z.dtype == dtype
    # The returned point's own residual, measured independently, is within a small factor of tol.
    assert float(_residual(f, z).max()) <= 2 * tol
    assert set(info) == INFO_KEYS
    assert all(torch.is_tensor(v) and v.is_floating_point() for v in info.values())
    B = shape[0]
    assert info["abs_lowest"].shape == (B,) and info["rel_lowest"].shape == (B,)
    # One trace column per step the budget allows (Broyden: x0's own residual first, then 200 updates);
    # the first f_evals are measured, the rest repeat the lowest residual (fixed width: infos merge).
    width = 201 if name == "broyden" else 200
    n = info.f_evals
    for mode in ("abs", "rel"):
        trace = info[f"{mode}_trace"]
        assert trace.shape == (B, width) and n < width
        assert torch.equal(trace[:, n:], info[f"{mode}_lowest"].unsqueeze(1).expand(B, width - n))
        assert torch.equal(trace[:, :n].min(dim=1).values, info[f"{mode}_lowest"])
    assert info["nstep"].shape == (B,) and info["nstep"].dtype == torch.float32
    assert info["converged"].shape == (B,) and info["f_evals"].shape == info["result"].shape == (1,)
    assert info["sradius"].shape == (1,)
    steps = info.f_evals - (name == "broyden")
    assert bool((info["nstep"] <= steps).all()) and bool((info["nstep"] >= 0).all())
    # run() without snapshots: the same solve, no trajectory.
    z_run, traj, info_run = solver.run(f, z0)
    assert traj == [] and torch.equal(z_run, z) and torch.equal(info_run["abs_trace"], info["abs_trace"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("container", [list, tuple])
def test_reaches_tolerance_list_state(name, container):
    f_flat, _, _, _ = tanh_contraction(2 * 9 + 3 * 4, 2, 0.8, seed=3)
    shapes = [(2, 2, 3, 3), (2, 3, 2, 2)]
    f = split_state(f_flat, [18, 12], shapes)
    z0 = container(torch.zeros(s, dtype=torch.float64) for s in shapes)
    solution = SOLVERS[name](max_iter=200, tol=1e-10, stop_mode="rel").solve(f, z0)
    z = solution.value
    assert isinstance(z, container) and [t.shape for t in z] == [torch.Size(s) for s in shapes]
    assert solution.result == "converged"
    assert float(_residual(f, z).max()) < 1e-9


def test_solvers_agree_with_each_other():
    f, z0, _, _ = tanh_contraction(40, 3, 0.9, seed=1)
    outs = [SOLVERS[n](max_iter=300, tol=1e-12).solve(f, z0).value for n in NAMES]
    for z in outs[1:]:
        assert torch.allclose(z, outs[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("ours,theirs", [("fixed_point", "fixed_point_iter"), ("anderson", "anderson"),
                                         ("broyden", "broyden")])
def test_agree_with_torchdeq(ours, theirs):
    tds = pytest.importorskip("torchdeq.solver")
    f, z0, _, _ = tanh_contraction(24, 2, 0.8, seed=2)
    solution = SOLVERS[ours](max_iter=100, tol=1e-11).solve(f, z0)
    z_ours, info_ours = solution.value, solution.stats
    z_theirs, _, info_theirs = tds.get_solver(theirs)(f, z0, max_iter=100, tol=1e-11)
    rel = (z_ours - z_theirs).norm() / z_theirs.norm()
    assert float(rel) < 1e-9
    # Same solver family, same problem: the iteration counts are comparable.
    assert info_ours.f_evals <= 101 and set(info_theirs) <= set(info_ours)


def test_lmdeq_anderson_beats_fixed_point():
    f, z0, _, _ = tanh_contraction(64, 2, 0.95, seed=4)
    fp = FixedPoint(max_iter=500, tol=1e-8).solve(f, z0).stats
    aa = Anderson(max_iter=500, tol=1e-8).solve(f, z0).stats
    assert aa.result == fp.result == "converged"
    assert aa.f_evals < fp.f_evals


@pytest.mark.parametrize("name", NAMES)
def test_indexing_trajectory(name):
    f, z0 = linear_contraction((2, 6), 0.5, seed=5)
    solver = SOLVERS[name](max_iter=100, tol=1e-8)
    # Run to completion to know the count; then ask for the estimates at steps before and after the stop.
    solution = solver.solve(f, z0)
    z_final = solution.value
    n = solution.stats.f_evals - (name == "broyden")   # steps: Broyden's are updates, after g(x0)
    _, traj, _ = solver.run(f, z0, snapshots=[1, 2, n + 5])
    assert len(traj) == 3
    # Step k's entry is the best estimate after k steps: compare with a fresh solve capped at k steps.
    for k, zk in zip([1, 2], traj[:2]):
        assert torch.equal(zk, solver.replace(max_iter=k).solve(f, z0).value)
    assert torch.equal(traj[2], z_final)
    # TorchDEQ's function contract (indexing=) gives the same trajectory.
    _, traj_fn, _ = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, max_iter=100, tol=1e-8, indexing=[1, 2, n + 5])
    assert len(traj_fn) == 3 and all(torch.equal(a, b) for a, b in zip(traj_fn, traj))


@pytest.mark.parametrize("name", NAMES)
def test_non_convergence_is_reported(name):
    # A non-contractive map: f(z) = 1.5 z + 1 has no attracting fixed point under iteration.
    f = lambda z: 1.5 * z + 1.0  # noqa: E731
    z0 = torch.zeros(3, 4, dtype=torch.float64)
    if name == "fixed_point":
        info = FixedPoint(max_iter=30, tol=1e-6).solve(f, z0).stats
        assert info.result == "diverged" and float(info["result"]) == Result.DIVERGED.code
    else:
        # Quasi-Newton methods solve a linear map exactly; give them a map with no fixed point instead.
        g = lambda z: z + 1.0 + 0.1 * torch.sin(z)  # noqa: E731
        info = SOLVERS[name](max_iter=10, tol=1e-6).solve(g, z0).stats
        assert info.result in ("max_iter", "diverged")
    assert not bool(info.converged.any())


@pytest.mark.parametrize("name", NAMES)
def test_low_max_iter_reported_and_never_returns_initial_guess(name):
    f, z0, _, _ = tanh_contraction(16, 2, 0.9, seed=6)
    solution = SOLVERS[name](max_iter=2, tol=1e-12).solve(f, z0)
    z, info = solution.value, solution.stats
    assert info.result == "max_iter" and not bool(info.converged.any())
    assert info.f_evals == (3 if name == "broyden" else 2)   # Broyden: g(x0), then 2 updates
    assert not torch.equal(z, z0)


@pytest.mark.parametrize("name", NAMES)
def test_raise_on_failure(name):
    f, z0, _, _ = tanh_contraction(16, 2, 0.9, seed=6)
    with pytest.raises(SolverError, match="did not converge"):
        SOLVERS[name](max_iter=2, tol=1e-12, raise_on_failure=True).solve(f, z0)
    with pytest.raises(SolverError, match="did not converge"):   # the option of the function contract
        LMDEQ_SOLVERS[f"lmdeq_{name}"](f, z0, max_iter=2, tol=1e-12, raise_on_failure=True)


@pytest.mark.parametrize("name", NAMES)
def test_torchdeq_options_ignored_and_func_with_tau(name, recwarn):
    calls = []

    def f(z, tau=1.0):  # TorchDEQ-style func: the solver must not double-damp by passing tau
        calls.append(tau)
        return 0.5 * z + 1.0

    # Options of other TorchDEQ/lmdeq solvers (TorchDEQ passes them to every solver) are ignored quietly.
    z, _, info = LMDEQ_SOLVERS[f"lmdeq_{name}"](f, torch.zeros(2, 3), max_iter=60, tol=1e-5, m=3, lam=1e-3,
                                                LBFGS_thres=4, memory=4, tau=1.0, return_final=False)
    assert info.result == "converged" and set(calls) == {1.0}
    assert torch.allclose(z, torch.full((2, 3), 2.0), atol=1e-4)
    assert not [w for w in recwarn if issubclass(w.category, UnknownOptionWarning)]
    # The solver objects call func(z) alike.
    calls.clear()
    solution = SOLVERS[name](max_iter=60, tol=1e-5).solve(f, torch.zeros(2, 3))
    assert solution.result == "converged" and set(calls) == {1.0}
    assert torch.allclose(solution.value, torch.full((2, 3), 2.0), atol=1e-4)
