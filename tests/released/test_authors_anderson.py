"""lmdeq.solvers.AuthorsAnderson against an independent re-implementation of the Anderson solver the
Lipschitz-MDEQ authors release (iiduka-researches/Lipschitz_mdeq, lib/solvers.py), in float64: the same
sequence of iterates handed to f, the same returned point, f-evaluation count and pooled residuals.

The reference below is written from the released algorithm's description, not from lmdeq's code, and
computes the mixing weights another way: alpha = A^-1 1 / (1^T A^-1 1) with A = G G^T + lam I (the
closed form of the bordered system the released code solves), with the history in a Python list.
"""
import math

import pytest
import torch

from lmdeq.solvers import SOLVERS, Anderson, AuthorsAnderson, Result

from ..solvers.problems import split_state, tanh_contraction


def released_anderson(f, x0, m, lam, threshold, eps, stop_mode="rel", beta=1.0):
    """(result, f_evals, lowest pooled residual, traces) of the released algorithm for a (B, n) state."""
    hist = [(x0, f(x0))]
    hist.append((hist[0][1], f(hist[0][1])))
    evals = 2
    lowest = {"abs": 1e8, "rel": 1e8}
    traces = {"abs": [], "rel": []}
    result = None
    for k in range(2, threshold):
        window = hist[-min(k, m):]                  # the n = min(k, m) newest pairs
        G = torch.stack([fx - x for x, fx in window], dim=1)   # (B, n, d)
        A = G @ G.transpose(1, 2) + lam * torch.eye(len(window), dtype=x0.dtype)
        w = torch.linalg.solve(A, torch.ones(A.shape[0], len(window), 1, dtype=x0.dtype))[..., 0]
        alpha = w / w.sum(dim=1, keepdim=True)
        fs = torch.stack([fx for _, fx in window], dim=1)
        xs = torch.stack([x for x, _ in window], dim=1)
        x = beta * torch.einsum("bn,bnd->bd", alpha, fs) + (1 - beta) * torch.einsum("bn,bnd->bd", alpha, xs)
        fx = f(x)
        evals += 1
        hist.append((x, fx))
        res = {"abs": float(torch.sqrt(((fx - x) ** 2).sum()))}
        res["rel"] = res["abs"] / (1e-5 + float(torch.sqrt((fx ** 2).sum())))
        for mode in res:
            traces[mode].append(res[mode])
            if res[mode] < lowest[mode]:
                lowest[mode] = res[mode]
                if mode == stop_mode:
                    result = x.clone()
        if res[stop_mode] < eps:
            break
    return result, evals, lowest[stop_mode], traces


def solve(solver, f, z0):
    """(value, stats) of solver.solve(f, z0)."""
    sol = solver.solve(f, z0)
    return sol.value, sol.stats


def logged(f):
    """f that records every input it is called with (flattened per sample)."""
    calls = []

    def g(z):
        calls.append(torch.cat([t.reshape(t.shape[0], -1) for t in z], 1) if isinstance(z, (list, tuple))
                     else z.reshape(z.shape[0], -1).clone())
        return f(z)

    return g, calls


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("m,lam,tau,tol,max_iter", [(6, 1e-4, 1.0, 1e-9, 40), (3, 1e-2, 0.7, 1e-6, 25),
                                                    (6, 1e-4, 1.0, 1e-30, 12)])
def test_same_iterates_as_the_released_algorithm(m, lam, tau, tol, max_iter):
    f, z0, _, _ = tanh_contraction(12, 3, 0.9, seed=1)
    ref_f, ref_calls = logged(f)
    ours_f, our_calls = logged(f)
    ref, ref_evals, ref_low, ref_traces = released_anderson(ref_f, z0, m, lam, max_iter, tol, beta=tau)
    z, info = solve(AuthorsAnderson(max_iter=max_iter, tol=tol, stop_mode="rel", m=m, lam=lam, tau=tau), ours_f, z0)
    assert len(our_calls) == len(ref_calls) == ref_evals == info.f_evals
    for ours, theirs in zip(our_calls, ref_calls):
        assert rel_err(ours, theirs) < 1e-10
    assert rel_err(z, ref) < 1e-10
    assert math.isclose(float(info["rel_lowest"][0]), ref_low, rel_tol=1e-8)
    done = len(ref_traces["rel"])   # checked steps; the trace is padded with the lowest residual after them
    assert info["rel_trace"].shape == (z0.shape[0], max_iter - 2)
    assert torch.allclose(info["rel_trace"][1, :done], torch.tensor(ref_traces["rel"], dtype=torch.float64), rtol=1e-8)
    assert torch.allclose(info["abs_trace"][0, :done], torch.tensor(ref_traces["abs"], dtype=torch.float64), rtol=1e-8)
    assert bool((info["rel_trace"][:, done:] == info["rel_lowest"][:, None]).all())
    assert bool(info["converged"].all()) == (ref_low < tol)
    if tol == 1e-30:   # never converges: all max_iter f-evaluations, lowest iterate returned
        assert info.f_evals == max_iter and info.result == Result.MAX_ITER


def test_list_state_is_one_flat_vector_per_sample():
    """An MDEQ-like multi-resolution state (a list of parts) is solved as the concatenated vector."""
    f, z0, _, _ = tanh_contraction(10, 2, 0.8, seed=3)
    sizes, shapes = [4, 6], [(2, 1, 2, 2), (2, 6)]
    f_list = split_state(f, sizes, shapes)
    z0_list = [p.reshape(s) for p, s in zip(z0.split(sizes, dim=1), shapes)]
    ref, evals, _, _ = released_anderson(f, z0, 6, 1e-4, 20, 1e-8)
    z, info = solve(AuthorsAnderson(max_iter=20, tol=1e-8), f_list, z0_list)
    assert isinstance(z, list) and [tuple(p.shape) for p in z] == shapes
    assert info.f_evals == evals
    assert rel_err(torch.cat([p.reshape(2, -1) for p in z], 1), ref) < 1e-10


def test_first_check_at_the_third_evaluation():
    """A constant map is solved by x_1 = f(x_0): lmdeq's Anderson checks every evaluation and stops at
    the 2nd (which measures x_1's residual), the released one checks only from its 3rd on."""
    c = torch.randn(4, 5, dtype=torch.float64)
    f = lambda z: c.clone()   # noqa: E731
    _, info = solve(AuthorsAnderson(max_iter=18, tol=1e-3), f, torch.zeros_like(c))
    assert info.f_evals == 3 and info["abs_trace"].shape == (4, 16)
    _, ours = solve(Anderson(max_iter=18, tol=1e-3, stop_mode="rel"), f, torch.zeros_like(c))
    assert ours.f_evals == 2


def test_one_residual_pooled_over_the_batch_decides():
    """Sample 0 is large and contracts fast, sample 1 is tiny and contracts slowly: the pooled relative
    residual is below tol long before sample 1's own residual is."""
    b = torch.zeros(2, 8, dtype=torch.float64)
    b[0] = 1e3
    b[1] = 1e-3
    rates = torch.tensor([[0.1], [0.999]], dtype=torch.float64)

    def f(z):
        return rates * torch.tanh(z) + b

    z, info = solve(AuthorsAnderson(max_iter=18, tol=1e-3), f, torch.zeros_like(b))
    fz = f(z)
    own = (fz - z).norm(dim=1) / fz.norm(dim=1)
    assert info.result == Result.CONVERGED and bool(info.converged.all())
    assert float(own[1]) > 1e-3 > float(info["rel_lowest"][1])
    assert torch.equal(info["rel_lowest"][0], info["rel_lowest"][1])   # one value for the whole batch


def test_absolute_ridge_is_not_scale_invariant():
    """lam is absolute: the same problem in other units (z -> s z) takes other iterates, while lmdeq's
    relative ridge gives the same iterates up to the scale."""
    f, z0, _, _ = tanh_contraction(12, 2, 0.9, seed=4)
    s = 1e-3
    g = lambda z: s * f(z / s)   # noqa: E731
    released = AuthorsAnderson(max_iter=10, tol=1e-30)
    big, small = released.solve(f, z0).value, released.solve(g, z0).value
    assert rel_err(small / s, big) > 1e-3
    ours = Anderson(max_iter=10, tol=1e-30, m=6, lam=1e-4)
    big, small = ours.solve(f, z0).value, ours.solve(g, z0).value
    assert rel_err(small / s, big) < 1e-8


def test_iterations_mode_and_trajectory():
    f, z0, _, _ = tanh_contraction(6, 2, 0.5, seed=5)
    z, traj, info = AuthorsAnderson(max_iter=7, exact=True, tol=1e-2).run(f, z0, snapshots=[1, 2, 5, 7])
    assert info.f_evals == 7 and len(traj) == 4
    assert (info.result == Result.CONVERGED) == bool(info.converged.all())   # computed on the device, no early stop
    assert torch.equal(traj[0], z0) and torch.equal(traj[-1], z)


def test_bad_arguments_name_themselves():
    f, z0, _, _ = tanh_contraction(4, 1, 0.5)
    with pytest.raises(ValueError, match="max_iter must be >= 3"):
        AuthorsAnderson(max_iter=2).solve(f, z0)
    with pytest.raises(ValueError, match="AuthorsAnderson: m must be an int >= 2"):
        AuthorsAnderson(m=1)
    with pytest.raises(ValueError, match="AuthorsAnderson: lam must be a finite number >= 0"):
        AuthorsAnderson(lam=-1.0)
    with pytest.raises(ValueError, match="1-based f-evaluation counts"):
        AuthorsAnderson().run(f, z0, snapshots=[0])
    assert SOLVERS["authors_anderson"] is AuthorsAnderson
