"""A-priori iteration counts for the MDEQ solves from the certified bound (stop_mode 'rel').

Let f be L-Lipschitz (L < 1), T z = (1 - tau) z + tau f(z) a q-contraction with q = 1 - tau + tau L and
fixed point z*. The residuals r_k = ||f(z_k) - z_k|| obey r_k <= q^k r_0
(:func:`lmdeq.solvers.iterations_for`), and ||z_k - z*|| <= r_k + L ||z_k - z*||, i.e.
||z_k - z*|| <= r_k / (1 - L), so ||f(z_k)|| >= ||z*|| - L r_k / (1 - L).

Forward solve, from z_0 = 0 (the MDEQ initial state): r_0 = ||f(0)|| <= (1 + L) ||z*||, hence

    rel_k = r_k / ||f(z_k)|| <= x / (a - b x),   x = q^k,  a = 1 / (1 + L),  b = L / (1 - L).

Adjoint solve g = J^T g + v with ||J^T||_2 <= L, from g_0 = v (lmdeq.deq): r_0 = ||J^T v|| <= L ||v||
and ||g*|| >= ||v|| / (1 + L), hence the same inequality with x = L q^k: the adjoint needs about one
step fewer.

x / (a - b x) <= tol  <=>  x <= tol a / (1 + tol b), so the counts are ``iterations_for(L, tol a /
(1 + tol b), r0, tau)`` with r0 = 1 (forward) or L (adjoint). They bound the relative residual of
every sample of the returned iterate; no data is read.
"""
from __future__ import annotations

from ..solvers import iterations_for

__all__ = ["apriori_iterations", "adjoint_apriori_iterations"]


def _threshold(lipschitz: float, tol: float) -> float:
    if not lipschitz < 1.0:
        raise RuntimeError(f"the certified bound L = {lipschitz:.4g} is not < 1: no a-priori iteration count "
                           "exists; set f_max_iter/b_max_iter and solve_mode='checked'")
    a = 1.0 / (1.0 + lipschitz)
    b = lipschitz / (1.0 - lipschitz)
    return tol * a / (1.0 + tol * b)


def apriori_iterations(lipschitz: float, tol: float, tau: float = 1.0) -> int:
    """Fixed-point steps from z_0 = 0 that guarantee a relative residual <= tol for an L-contraction."""
    return iterations_for(lipschitz, _threshold(lipschitz, tol), 1.0, tau)


def adjoint_apriori_iterations(lipschitz: float, tol: float, tau: float = 1.0) -> int:
    """Fixed-point steps of g = J^T g + v from g_0 = v (||J|| <= L) that guarantee a relative residual
    <= tol."""
    return iterations_for(lipschitz, _threshold(lipschitz, tol), lipschitz, tau)
