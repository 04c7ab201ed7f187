"""lmdeq's solvers under TorchDEQ's names against TorchDEQ 0.1.0's own, called directly.

Same problem, same arguments: fixed_point_iter, simple_fixed_point_iter and broyden must give the same
z, trajectory and info (values, shapes, dtypes: the 1e8 first column, the padding after an early stop);
anderson the same layout, and the same iterates when both run the unregularised method (lam=0).

Only where TorchDEQ's own result is well defined (:func:`_well_defined`): a Broyden update divides by a
product of residual differences, so once a residual reaches the rounding floor, TorchDEQ's next update is
rounding noise divided by rounding noise (0/0 or x/0 on some CPUs: inf in its z), and whether that happens
depends on the CPU's rounding (seen on an AMD EPYC, not on Intel Xeons). A comparison that would run past
the floor runs both solvers up to the first step whose residual is at the floor instead.
:func:`test_broyden_breakdown_at_the_floor` states the deliberate difference on a problem whose every
operation is a correctly rounded scalar operation, so that the breakdown happens on every CPU.
"""
import inspect

import pytest
import torch

from lmdeq.integrations.torchdeq_solvers import TORCHDEQ_SOLVERS
from lmdeq.solvers import Result
from lmdeq.solvers.tracking import Tracker

from ..cpu_paths import unrecorded
from .problems import tanh_contraction

tds = pytest.importorskip("torchdeq.solver")

MAX_ITERS = [0, 1, 2, 3, 5, 20, torch.tensor(4)]


def _problem(dtype=torch.float64):
    f, z0, _, _ = tanh_contraction(8, 3, 0.8, dtype=dtype, seed=21)

    def func(z, tau=1.0):  # like the funcs TorchDEQ's cores pass: damped when asked
        return f(z) if tau == 1.0 else tau * f(z) + (1 - tau) * z

    return func, z0


def _run(name, f, z0, **kw):
    theirs = tds.get_solver(name)(f, z0.clone(), **kw)
    ours = TORCHDEQ_SOLVERS[name](f, z0.clone(), **kw)
    return theirs, ours


# A residual below this many units of roundoff of its state, relative to ||f(z)||, is rounding noise.
FLOOR_ULPS = 1000


def _floor_step(info, dtype):
    """The first step whose relative residual (TorchDEQ's rel_trace: |f(z) - z| / (|f(z)| + 1e-9)) is at the
    rounding floor for some sample, or None. Column k of the trace is step k (column 0 is the 1e8 sentinel)."""
    floor = FLOOR_ULPS * torch.finfo(dtype).eps
    below = (info["rel_trace"][:, 1:] < floor).any(dim=0).nonzero()
    return int(below[0]) + 1 if len(below) else None


def _well_defined(name, f, z0, **kw):
    """``_run`` where TorchDEQ's result is well defined: finite, and no update computed from a residual at the
    rounding floor. A solve that would go on past its first floor step k runs both solvers for k steps."""
    with unrecorded():   # the probe may run into the floor: its outcome is allowed to differ between CPUs
        _, _, info = tds.get_solver(name)(f, z0.clone(), **kw)
    k = _floor_step(info, z0.dtype)
    requested = int(kw.get("max_iter", 50))
    if k is not None and k < requested:
        kw = {**kw, "max_iter": k}
    theirs, ours = _run(name, f, z0, **kw)
    assert torch.isfinite(theirs[0]).all(), f"TorchDEQ's {name} is not finite above the rounding floor ({kw})"
    return theirs, ours


def _assert_same(theirs, ours, exact=True):
    (zt, tt, it), (zo, to, io) = theirs, ours
    assert sorted(io) == sorted(it) == ["abs_lowest", "abs_trace", "nstep", "rel_lowest", "rel_trace", "sradius"]
    for k in it:
        assert io[k].shape == it[k].shape and io[k].dtype == it[k].dtype, (k, io[k].shape, it[k].shape)
        if exact:
            assert torch.allclose(io[k], it[k], rtol=1e-10, atol=1e-14), (k, io[k], it[k])
    if exact:
        assert torch.allclose(zo, zt, rtol=1e-12, atol=0)
        assert len(to) == len(tt) and all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(to, tt))


@pytest.mark.parametrize("name", ["fixed_point_iter", "broyden"])
@pytest.mark.parametrize("max_iter", MAX_ITERS, ids=str)
@pytest.mark.parametrize("tol,stop_mode", [(1e-5, "abs"), (1e-5, "rel"), (1e-11, "abs")])
@pytest.mark.parametrize("return_final", [False, True])
def test_same_results(name, max_iter, tol, stop_mode, return_final):
    f, z0 = _problem()
    _assert_same(*_well_defined(name, f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                                return_final=return_final))


def test_the_floor_rule_keeps_the_comparisons():
    # The rule only cuts Broyden solves that run past the floor: 20 updates with return_final (or a tol below
    # the floor), at step 13 of this problem, where every residual is still 1e-12 or more before it.
    f, z0 = _problem()
    with unrecorded():
        _, _, info = tds.broyden_solver(f, z0, max_iter=20, tol=1e-5, return_final=True)
    assert _floor_step(info, z0.dtype) == 13
    assert bool((info["abs_trace"][:, 1:13] > 1e-12).all())
    _, _, fp_info = tds.fixed_point_iter(f, z0, max_iter=20, tol=1e-5, return_final=True)
    assert _floor_step(fp_info, z0.dtype) is None


# A scalar problem (n = 1, one rank-one term): every operation of either Broyden is a correctly rounded IEEE
# operation, so the iterates are the same on every CPU. The residual reaches 5.6e-17 at update 10 and stays
# there exactly at update 11 while z still moves: the secant denominator v^T dg is exactly 0.
_SCALAR = tuple(float.fromhex(h) for h in ("-0x1.3f4427214a280p-8", "-0x1.ebc2e6942cbc5p-2",
                                           "-0x1.d6e45d3df5cd0p-5"))


def test_broyden_breakdown_at_the_floor():
    a, b, c = _SCALAR

    def f(z):
        return a * z + b + c * z * z

    z0 = torch.zeros(1, 1, dtype=torch.float64)
    kw = dict(max_iter=16, tol=1e-5, return_final=True, LBFGS_thres=1)
    (zt, _, it), (zo, _, io) = _run("broyden", f, z0, **kw)
    # Identical up to the floor ...
    assert torch.equal(io["abs_trace"][:, :12], it["abs_trace"][:, :12])
    assert float(it["abs_trace"][0, 11]) == float(it["abs_trace"][0, 10]) < 1e-16
    # ... then TorchDEQ divides by the zero secant denominator; lmdeq skips that update and stays at z*.
    assert not bool(torch.isfinite(zt).all()) and not bool(torch.isfinite(it["abs_trace"][:, 12:]).any())
    assert bool(torch.isfinite(zo).all()) and bool(torch.isfinite(io["abs_trace"]).all())
    assert float((f(zo) - zo).abs()) < 1e-15


@pytest.mark.parametrize("max_iter", MAX_ITERS, ids=str)
@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_simple_fixed_point_iter_runs_exactly_max_iter_steps(max_iter, tau):
    f, z0 = _problem()
    calls = []
    theirs = tds.simple_fixed_point_iter(f, z0, max_iter=max_iter, tau=tau, tol=1.0, indexing=[1, 3])

    def counted(z):  # lmdeq damps itself: a func without tau works
        calls.append(1)
        return f(z)

    ours = TORCHDEQ_SOLVERS["simple_fixed_point_iter"](counted, z0, max_iter=max_iter, tau=tau, tol=1.0,
                                                       indexing=[1, 3])
    n = int(max_iter)
    assert len(calls) == n   # no stop at tol, however loose
    (zt, traj_t, it), (zo, traj_o, io) = theirs, ours
    _assert_same((zt, [], it), (zo, [], io))
    # Indices the solve never reaches: TorchDEQ returns no state for them, lmdeq the last state.
    assert len(traj_o) == 2 and len(traj_t) == (n >= 1) + (n >= 3)
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(traj_o, traj_t))
    assert io.extras["f_evals"].item() == n


@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_fixed_point_iter_damped_residuals(tau):
    f, z0 = _problem()
    _assert_same(*_run("fixed_point_iter", f, z0, max_iter=20, tol=1e-5, tau=tau))


@pytest.mark.parametrize("thres", [None, 2, 5])
def test_broyden_memory(thres):
    f, z0 = _problem()
    _assert_same(*_run("broyden", f, z0, max_iter=12, tol=1e-30, LBFGS_thres=thres))


@pytest.mark.parametrize("name", ["fixed_point_iter", "broyden", "anderson"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_follow_torchdeq(name, dtype):
    f, z0 = _problem(dtype)
    for max_iter in (0, 2, 6):
        _assert_same(*_run(name, f, z0, max_iter=max_iter, tol=1e-30), exact=False)


@pytest.mark.parametrize("max_iter,tol", [(3, 1e-30), (5, 1e-30), (8, 1e-30), (20, 1e-6)])
def test_anderson_unregularised_iterates_are_torchdeqs(max_iter, tol):
    # With lam=0 both solve the same bordered system; lmdeq's relative regulariser is the only
    # algorithmic difference of its Anderson (and its first two steps may stop a converged solve early).
    f, z0 = _problem()
    theirs, ours = _run("anderson", f, z0, max_iter=max_iter, tol=tol, lam=0.0)
    _assert_same(theirs, ours, exact=False)
    # Two implementations of one bordered solve (LAPACK's rounding differs by CPU): normwise, not per element.
    assert float((ours[0] - theirs[0]).norm() / theirs[0].norm()) < 1e-8
    assert torch.equal(ours[2]["nstep"], theirs[2]["nstep"])
    visible = ours[2]["abs_trace"][:, 1:]
    assert _floor_step(theirs[2], z0.dtype) is None   # above the floor: relative errors of residuals mean something
    assert torch.allclose(visible, theirs[2]["abs_trace"][:, 1:], rtol=1e-6, atol=0)


@pytest.mark.parametrize("max_iter", [1, 2])
def test_anderson_small_max_iter_is_not_x0(max_iter):
    f, z0 = _problem()
    (zt, _, it), (zo, _, io) = _run("anderson", f, z0, max_iter=max_iter, tol=1e-30)
    assert torch.equal(zt, z0) and bool((it["abs_lowest"] == 1e8).all())   # TorchDEQ: x0, unmeasured
    res = lambda z: (f(z) - z).flatten(1).norm(dim=1)  # noqa: E731
    assert bool((res(zo) < res(z0)).all()) and bool((io["nstep"] == max_iter).all())
    assert io["abs_trace"].shape == it["abs_trace"].shape == (3, 1)       # TorchDEQ's width
    assert io.extras["f_evals"].item() == max_iter


def test_trace_layout_sentinel_and_padding():
    f, z0 = _problem()
    _, _, info = TORCHDEQ_SOLVERS["fixed_point_iter"](f, z0, max_iter=30, tol=1e-4)
    steps = info.f_evals
    assert 1 < steps < 30 and info.result == Result.CONVERGED
    trace = info["abs_trace"]
    assert trace.shape == (3, 31) and bool((trace[:, 0] == 1e8).all())
    assert torch.equal(trace[:, steps + 1:], info["abs_lowest"].unsqueeze(1).expand(3, 30 - steps))
    assert bool((trace[:, steps] < 1e-4).all())


def test_broyden_trajectory_is_the_indexed_step():
    # TorchDEQ's Broyden stores step k - 1 under index k (`(nstep + 1) in indexing`); lmdeq stores step k.
    f, z0 = _problem()
    for k in (2, 4):
        _, traj_t, _ = tds.broyden_solver(f, z0, max_iter=10, tol=1e-30, indexing=[k])
        _, traj_o, _ = TORCHDEQ_SOLVERS["broyden"](f, z0, max_iter=10, tol=1e-30, indexing=[k])
        z_k, _, _ = TORCHDEQ_SOLVERS["broyden"](f, z0, max_iter=k, tol=1e-30)
        z_k1, _, _ = TORCHDEQ_SOLVERS["broyden"](f, z0, max_iter=k - 1, tol=1e-30)
        assert torch.allclose(traj_o[0], z_k, rtol=1e-12) and torch.allclose(traj_t[0], z_k1, rtol=1e-12)


@pytest.mark.parametrize("name", ["fixed_point_iter", "anderson", "broyden"])
def test_every_index_is_returned(name):
    f, z0 = _problem()
    indexing = [1, 2, 3, 15, 40]
    theirs, ours = _run(name, f, z0, max_iter=40, tol=1e-5, indexing=indexing)
    assert len(ours[1]) == len(indexing) and len(theirs[1]) < len(indexing)
    assert torch.equal(ours[1][-1], ours[0])


@pytest.mark.parametrize("name", ["fixed_point_iter", "anderson", "broyden", "simple_fixed_point_iter"])
def test_list_state_and_func_without_tau(name):
    f, z0 = _problem()
    flat = lambda z: f(z)  # noqa: E731
    split = lambda zs: list(flat(torch.cat(zs, 1)).split([3, 5], 1))  # noqa: E731
    z_flat, _, info_flat = TORCHDEQ_SOLVERS[name](flat, z0, max_iter=15, tol=1e-6)
    z_list, _, info_list = TORCHDEQ_SOLVERS[name](split, list(z0.split([3, 5], 1)), max_iter=15, tol=1e-6)
    assert torch.allclose(torch.cat(z_list, 1), z_flat, rtol=1e-10)
    assert torch.equal(info_list["nstep"], info_flat["nstep"])


def test_sync_free_options_reach_the_torchdeq_names(monkeypatch):
    reads = []
    original = Tracker.should_stop

    def counting(self):
        if self.records % self.check_every == 0:
            reads.append(self.records)
        return original(self)

    monkeypatch.setattr(Tracker, "should_stop", counting)
    f, z0 = _problem()
    TORCHDEQ_SOLVERS["fixed_point_iter"](f, z0, max_iter=12, tol=1e-30, check_every=4)
    assert reads == [4, 8, 12]


@pytest.mark.parametrize("name", sorted(TORCHDEQ_SOLVERS))
def test_signatures_match_torchdeq(name):
    theirs = inspect.signature(tds.get_solver(name)).parameters
    ours = inspect.signature(TORCHDEQ_SOLVERS[name]).parameters
    assert list(ours) == list(theirs)
    assert all(ours[p].default == theirs[p].default for p in theirs)



def test_no_host_sync_per_step_by_default_on_an_accelerator():
    # TorchDEQ reads the residual back after every step; lmdeq's solvers, under its names too, every
    # check_every steps: 4 by default on an accelerator (1 on the CPU, where a read-back is free).
    from lmdeq.solvers.tracking import default_check_every

    assert default_check_every(torch.device("cuda")) == 4 and default_check_every(torch.device("cpu")) == 1
