"""A-priori iteration counts for the MDEQ solves from the certified bound (stop_mode 'rel').

Let f be L-Lipschitz (L < 1) and T z = (1 - tau) z + tau f(z), a q-contraction with q = 1 - tau + tau L
and fixed point z*. From z_0 = 0 (the MDEQ initial state) the residuals r_k = ||f(z_k) - z_k|| obey
r_k <= q^k r_0 (:func:`lmdeq.solvers.iterations_for`), with r_0 = ||f(0)|| <= (1 + L) ||z*||, and
||f(z_k)|| >= ||z*|| - L ||z_k - z*|| >= (1 - L q^k) ||z*||. Hence the relative residual

    r_k / ||f(z_k)|| <= q^k (1 + L) / (1 - L q^k) <= q^k (1 + L) / (1 - L),

which is <= tol once q^k <= tol (1 - L) / (1 + L): the count is
``iterations_for(L, tol (1 - L) / (1 + L), r0=1, tau)``. The backward (adjoint) problem
g = J^T g + v has ||J^T||_2 <= L and is started at g_0 = v (lmdeq.deq), which satisfies the same
inequality with a smaller constant (r_0 <= L ||v||, ||g*|| >= ||v|| / (1 + L)), so the same count
certifies it. The bound is on the relative residual of every sample; no data is read.
"""
from __future__ import annotations

from ..solvers import iterations_for

__all__ = ["apriori_iterations"]


def apriori_iterations(lipschitz: float, tol: float, tau: float = 1.0) -> int:
    """Fixed-point steps from z_0 = 0 that guarantee a relative residual <= tol for an L-contraction."""
    if not lipschitz < 1.0:
        raise RuntimeError(f"the certified bound L = {lipschitz:.4g} is not < 1: no a-priori iteration count "
                           "exists; set f_max_iter/b_max_iter and solve_mode='checked'")
    return iterations_for(lipschitz, tol * (1.0 - lipschitz) / (1.0 + lipschitz), 1.0, tau)
