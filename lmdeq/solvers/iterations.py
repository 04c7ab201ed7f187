"""A-priori iteration counts from Banach's fixed-point theorem.

For f with Lipschitz constant L < 1 the damped map T z = (1 - tau) z + tau f(z) is a contraction with
q = 1 - tau + tau L, and the residuals r_k = ||f(z_k) - z_k|| of the iterates z_{k+1} = T z_k obey

    tau r_k = ||T z_k - z_k|| = ||T z_k - T z_{k-1}|| <= q ||z_k - z_{k-1}|| = q tau r_{k-1},

so r_k <= q^k r_0. After N = ceil(log(tol / r_0) / log q) steps the returned iterate z_N therefore has
residual r_N <= tol, whatever the map's finer structure: no convergence check is needed.

Relative residuals (stop_mode 'rel'), :func:`apriori_iterations` and :func:`adjoint_apriori_iterations`:
||z_k - z*|| <= r_k + L ||z_k - z*||, i.e. ||z_k - z*|| <= r_k / (1 - L), so ||f(z_k)|| >= ||z*|| - L r_k / (1 - L).

Forward solve, from z_0 = 0 (the MDEQ initial state): r_0 = ||f(0)|| <= (1 + L) ||z*||, hence

    rel_k = r_k / ||f(z_k)|| <= x / (a - b x),   x = q^k,  a = 1 / (1 + L),  b = L / (1 - L).

Adjoint solve g = J^T g + v with ||J^T||_2 <= L, from g_0 = v (lmdeq.deq's Implicit(x0='v')): r_0 = ||J^T v||
<= L ||v|| and ||g*|| >= ||v|| / (1 + L), hence the same inequality with x = L q^k: the adjoint needs about one
step fewer.

x / (a - b x) <= tol  <=>  x <= tol a / (1 + tol b), so the counts are ``iterations_for(L, tol a /
(1 + tol b), r0, tau)`` with r0 = 1 (forward) or L (adjoint). They bound the relative residual of
every sample of the returned iterate; no data is read.

A-priori counts are part of a CUDA graph's key, so every change of count is a recapture (warm-up, capture,
synchronize). :class:`SettledCounts` makes those rare for a caller that resolves counts again and again (a model
whose L drifts while training): a count rises at once to what L needs (fewer iterations would void the
certificate) but falls only when the need has dropped by ``slack`` iterations or more. Running k >= needed
iterations keeps the certificate: the Banach bound (1 - tau + tau L)^k only shrinks with k.
"""
from __future__ import annotations

import math

from .. import checks

__all__ = ["iterations_for", "apriori_iterations", "adjoint_apriori_iterations", "SettledCounts"]


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


def _relative_threshold(lipschitz: float, tol: float) -> float:
    """The absolute target tol a / (1 + tol b) of x = q^k that a relative residual tol needs (module docstring)."""
    if not lipschitz < 1.0:
        raise RuntimeError(f"the certified bound L = {lipschitz:.4g} is not < 1: no a-priori iteration count "
                           "exists; give the solver an int max_iter (and exact=False) instead of Apriori()")
    a = 1.0 / (1.0 + lipschitz)
    b = lipschitz / (1.0 - lipschitz)
    return tol * a / (1.0 + tol * b)


def apriori_iterations(lipschitz: float, tol: float, tau: float = 1.0) -> int:
    """Fixed-point steps from z_0 = 0 that guarantee a relative residual <= tol for an L-contraction."""
    return iterations_for(lipschitz, _relative_threshold(lipschitz, tol), 1.0, tau)


def adjoint_apriori_iterations(lipschitz: float, tol: float, tau: float = 1.0) -> int:
    """Fixed-point steps of g = J^T g + v from g_0 = v (||J|| <= L) that guarantee a relative residual
    <= tol."""
    return iterations_for(lipschitz, _relative_threshold(lipschitz, tol), lipschitz, tau)


class SettledCounts:
    """Iteration counts with hysteresis (module docstring): ``settle(name, needed, slack)`` returns the count to
    run, never below ``needed``; it changes when ``needed`` exceeds it or falls ``slack`` or more below it.
    ``changes`` counts the settled values that differed from the previous one (each is a recapture of the
    graphs keyed by it)."""

    def __init__(self):
        self.current: dict = {}
        self.changes = 0

    def settle(self, name: str, needed: int, slack: int = 2) -> int:
        slack = checks.integer("slack", slack, 1)
        held = self.current.get(name)
        if held is None or needed > held or needed <= held - slack:
            if held is not None:
                self.changes += 1
            self.current[name] = held = needed
        return held
