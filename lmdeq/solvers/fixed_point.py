"""Damped fixed-point iteration (Krasnoselskii-Mann / Picard).

    z_{k+1} = T z_k = (1 - tau) z_k + tau f(z_k),   residual r_k = ||f(z_k) - z_k|| per sample.

For a contraction f with constant L < 1 the damped map is a contraction with constant
q = 1 - tau + tau L, and r_k <= q^k r_0 (Banach), see :func:`lmdeq.solvers.iterations_for`.
Each step is one fused op (``lmdeq.ops.fixed_point_update_multi``): the update and both per-sample
norms in a single pass over the state, for tensor and list states alike (no flattening).
Step k (1-based) is the k-th f-evaluation; the estimate it vouches for is z_k = T z_{k-1}.
"""
from __future__ import annotations

from .. import ops
from .state import check_solver_args, warn_unknown_options
from .tracking import start_solve

__all__ = ["fixed_point"]


def fixed_point(func, x0, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "abs", indexing=None,
                tau: float = 1.0, return_final: bool = False, check_every=None, iterations=None,
                raise_on_failure: bool = False, contract: str = "lmdeq", **kwargs):
    """Solve z = func(z) by damped fixed-point iteration (TorchDEQ solver contract).

    Args:
        func: state -> state, with the structure of ``x0`` (tensor, or list/tuple of tensors).
        x0: initial guess, batch first.
        max_iter: maximum number of f-evaluations (>= 0; 0 returns x0 without evaluating func).
        tol, stop_mode: stop when every sample's lowest 'abs' or 'rel' residual is below tol.
        indexing: 1-based step numbers whose best estimate is returned in the trajectory (steps after
            an early stop get the final estimate, so ``len(trajectory) == len(set(indexing))``).
        tau: damping in (0, 1].
        return_final: return the last iterate instead of the lowest-residual one.
        check_every: read the convergence flag back every this many steps (default: 1 on CPU, 4 on
            GPU); between reads the loop never waits for the device.
        iterations: run exactly this many steps with no host sync at all and return the final iterate.
        raise_on_failure: raise :class:`SolverError` unless every sample converged.
        contract: info layout, ``'lmdeq'`` or ``'torchdeq'`` (see :mod:`lmdeq.solvers.tracking`); under
            ``'torchdeq'`` the residuals are those of the damped map, tau ||f(z) - z|| relative to
            ||T z||, as TorchDEQ's ``fixed_point_iter`` measures them.
        kwargs: options of other solvers are ignored (TorchDEQ passes them to every solver); an option
            no solver knows warns once.

    Returns:
        (z_star, trajectory, info), info as described in :mod:`lmdeq.solvers.info`.
    """
    warn_unknown_options("fixed_point", kwargs)
    max_iter, iterations = check_solver_args(max_iter, tol, stop_mode, tau=tau, check_every=check_every,
                                             iterations=iterations)
    budget = iterations if iterations is not None else max_iter
    layout, f, steps, tracker = start_solve(func, x0, max_iter, tol, stop_mode, indexing, return_final,
                                            check_every, iterations, contract=contract, trace_width=budget + 1)
    damped = contract == "torchdeq" and tau != 1.0
    z = layout.parts(x0)
    for k in range(steps):
        fz = f(z)
        z, res, fz_norm = ops.fixed_point_update_multi(z, fz, tau)
        if damped:
            res, fz_norm = tau * res, layout.norm(z)
        tracker.record(res, res / (fz_norm + 1e-9), z, step=k + 1, owned=True)
        if iterations is None and tracker.should_stop():
            break
    return tracker.finish(tracker.records, raise_on_failure=raise_on_failure, solver="fixed_point")
