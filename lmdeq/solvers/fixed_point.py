"""Damped fixed-point iteration (Krasnoselskii-Mann / Picard).

    z_{k+1} = (1 - tau) z_k + tau f(z_k),   residual r_k = ||f(z_k) - z_k|| per sample.

For a contraction f with constant L < 1 the damped map is a contraction with constant
q = 1 - tau + tau L, and r_k <= q^k r_0 (Banach), see :func:`lmdeq.solvers.iterations_for`.
Each step is one fused op (``lmdeq.ops.fixed_point_update_multi``): the update and both per-sample
norms in a single pass over the state, for tensor and list states alike (no flattening).
"""
from __future__ import annotations

from .. import ops
from .state import check_solver_args
from .tracking import start_solve

__all__ = ["fixed_point"]


def fixed_point(func, x0, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "abs", indexing=None,
                tau: float = 1.0, return_final: bool = False, check_every=None, iterations=None,
                raise_on_failure: bool = False, **kwargs):
    """Solve z = func(z) by damped fixed-point iteration (TorchDEQ solver contract).

    Args:
        func: state -> state, with the structure of ``x0`` (tensor, or list/tuple of tensors).
        x0: initial guess, batch first.
        max_iter: maximum number of f-evaluations.
        tol, stop_mode: stop when every sample's lowest 'abs' or 'rel' residual is below tol.
        indexing: 1-based step numbers whose best estimate is returned in the trajectory (steps after
            an early stop get the final estimate, so ``len(trajectory) == len(set(indexing))``).
        tau: damping in (0, 1].
        return_final: return the last iterate instead of the lowest-residual one.
        check_every: read the convergence flag back every this many steps (default: 1 on CPU, 4 on
            GPU); between reads the loop never waits for the device.
        iterations: run exactly this many steps with no host sync at all and return the final
            iterate; ``info['result']`` is then ``'unchecked'`` (``info['converged']`` still says, per
            sample, whether the last measured residual is below tol).
        raise_on_failure: raise :class:`SolverError` unless every sample converged.
        kwargs: ignored (TorchDEQ passes solver-specific options).

    Returns:
        (z_star, trajectory, info) with info keys abs_lowest, rel_lowest, abs_trace, rel_trace, nstep,
        sradius, converged, result, f_evals.
    """
    check_solver_args(max_iter, tol, stop_mode, tau=tau, check_every=check_every, iterations=iterations)
    layout, f, steps, tracker = start_solve(func, x0, max_iter, tol, stop_mode, indexing, return_final,
                                            check_every, iterations)
    z = layout.parts(x0)
    for _ in range(steps):
        fz = f(z)
        z, res, fz_norm = ops.fixed_point_update_multi(z, fz, tau)
        tracker.record(res, res / (fz_norm + 1e-9), z, owned=True)
        if iterations is None and tracker.should_stop():
            break
    return tracker.finish(tracker.steps, checked=iterations is None,
                          raise_on_failure=raise_on_failure, solver="fixed_point")
