"""Damped fixed-point iteration (Krasnoselskii-Mann / Picard).

    z_{k+1} = T z_k = (1 - tau) z_k + tau f(z_k),   residual r_k = ||f(z_k) - z_k|| per sample.

For a contraction f with constant L < 1 the damped map is a contraction with constant
q = 1 - tau + tau L, and r_k <= q^k r_0 (Banach), see :func:`lmdeq.solvers.iterations_for`.
Each step is one fused op (``lmdeq.ops.fixed_point_update_multi``): the update and both per-sample
norms in a single pass over the state, for tensor and list states alike (no flattening).
Step k (1-based) is the k-th f-evaluation; the estimate it vouches for is z_k = T z_{k-1}.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import checks, ops
from .base import Solver, register_solver
from .tracking import start_solve

__all__ = ["FixedPoint"]


@register_solver
@dataclass(frozen=True, kw_only=True)
class FixedPoint(Solver):
    """Damped fixed-point iteration, ``tau`` in (0, 1] (module docstring). ``max_iter`` counts f-evaluations
    (0 returns z0 without evaluating f); the common fields are those of :class:`~lmdeq.solvers.Solver`."""

    name = "fixed_point"
    tau: float = 1.0

    def _check(self, where):
        object.__setattr__(self, "tau", checks.damping("tau", self.tau, where=where))

    def _run(self, func, x0, steps, snapshots, tracker):
        layout, f, track = start_solve(self, func, x0, steps, snapshots, tracker)
        z = layout.parts(x0)
        for k in range(steps):
            z, res, fz_norm = ops.fixed_point_update_multi(z, f(z), self.tau)
            abs_res, rel_res = track.step_residuals(res, fz_norm, self.tau, z)
            track.record(abs_res, rel_res, z, step=k + 1, owned=True)
            if not self.exact and track.should_stop():
                break
        return track.finish(track.records, raise_on_failure=self.raise_on_failure, solver=self.name)
