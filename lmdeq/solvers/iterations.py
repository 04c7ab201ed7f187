"""A-priori iteration counts from Banach's fixed-point theorem.

For f with Lipschitz constant L < 1 the damped map T z = (1 - tau) z + tau f(z) is a contraction with
q = 1 - tau + tau L, and the residuals r_k = ||f(z_k) - z_k|| of the iterates z_{k+1} = T z_k obey

    tau r_k = ||T z_k - z_k|| = ||T z_k - T z_{k-1}|| <= q ||z_k - z_{k-1}|| = q tau r_{k-1},

so r_k <= q^k r_0. After N = ceil(log(tol / r_0) / log q) steps the returned iterate z_N therefore has
residual r_N <= tol, whatever the map's finer structure: no convergence check is needed.
"""
from __future__ import annotations

import math

from .. import checks

__all__ = ["iterations_for"]


def iterations_for(lipschitz: float, tol: float, r0: float, tau: float = 1.0) -> int:
    """Picard steps that guarantee ||f(z_N) - z_N|| <= tol for an L-contraction, from residual r0.

    Args:
        lipschitz: certified Lipschitz constant L of f, 0 <= L < 1 (same norm as the residuals).
        tol: target residual (> 0), absolute; for a relative target pass tol_rel * ||f(z)|| bound.
        r0: residual ||f(z_0) - z_0|| of the initial guess (>= 0).
        tau: damping in (0, 1].
    Returns:
        N >= 1 (at least one step is taken so the returned point is f-evaluated).
    """
    lipschitz = checks.number("lipschitz", lipschitz, 0, 1, high_open=True)
    tol = checks.number("tol", tol, 0, low_open=True)
    r0 = checks.number("r0", r0, 0)
    tau = checks.damping("tau", tau)
    q = 1.0 - tau + tau * lipschitz
    if r0 <= tol:
        return 1
    if q == 0.0:
        return 1
    return max(1, math.ceil(math.log(tol / r0) / math.log(q)))
