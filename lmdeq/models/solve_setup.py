"""An MDEQ config's solves as :func:`lmdeq.deq_solve` arguments, with the a-priori iteration counts filled in.

The config spells the solves in deq_solve's flat naming (:mod:`lmdeq.deq.flat`), so the arguments are
``lmdeq.deq.flat.solve_arguments`` of it; the only thing added here is what the certified bound L decides
(:func:`lmdeq.solvers.apriori_iterations`, :func:`lmdeq.solvers.adjoint_apriori_iterations`):

* ``solve_mode='apriori'``: both solves run exactly their a-priori count (``iterations``), with no convergence
  checks and no host sync;
* ``f_max_iter=None`` / ``b_max_iter=None``: that solve's cap is its a-priori count (it still stops at tol).

A-priori counts are part of a CUDA graph's key, so every change of count is a recapture (warm-up, capture,
synchronize). :class:`SettledCounts` makes those rare: a count rises at once to what L needs (fewer iterations
would void the certificate) but falls only when the need has dropped by ``slack`` iterations or more. Running
k >= needed iterations keeps the certificate: the Banach bound (1 - tau + tau L)^k only shrinks with k.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

from .. import checks
from ..deq.flat import solve_arguments as flat_solve_arguments
from ..solvers import adjoint_apriori_iterations, apriori_iterations

__all__ = ["SettledCounts", "needs_bound", "solve_arguments"]


def needs_bound(cfg: dict) -> bool:
    """Whether the config's solves take an iteration count from the certified bound."""
    return cfg["solve_mode"] == "apriori" or cfg["f_max_iter"] is None or cfg["b_max_iter"] is None


class SettledCounts:
    """Iteration counts with hysteresis (see the module docstring): ``settle(name, needed)`` returns the count to
    run, never below ``needed``; it changes when ``needed`` exceeds it or falls ``slack`` or more below it.
    ``changes`` counts the settled values that differed from the previous one (each is a recapture of the
    graphs keyed by it)."""

    def __init__(self, slack: int = 2):
        self.slack = checks.integer("slack", slack, 1)
        self.current: dict = {}
        self.changes = 0

    def settle(self, name: str, needed: int) -> int:
        held = self.current.get(name)
        if held is None or needed > held or needed <= held - self.slack:
            if held is not None:
                self.changes += 1
            self.current[name] = held = needed
        return held


def solve_arguments(cfg: dict, bound: Callable[[], float],
                    settled: Optional[SettledCounts] = None) -> Tuple[dict, Optional[float]]:
    """(deq_solve's keyword arguments, the bound L when one was needed, else None); ``bound()`` is called only
    when a count is needed. With ``settled``, a-priori solves run its settled counts (at least L's)."""
    if not needs_bound(cfg):
        return flat_solve_arguments(cfg), None
    flat = dict(cfg)
    L = bound()
    f_count = apriori_iterations(L, cfg["f_tol"], cfg["f_solver_kwargs"].get("tau", 1.0))
    b_count = adjoint_apriori_iterations(L, cfg["b_tol"], cfg["b_solver_kwargs"].get("tau", 1.0))
    if cfg["solve_mode"] == "apriori":
        if settled is not None:
            f_count, b_count = settled.settle("forward", f_count), settled.settle("adjoint", b_count)
        flat.update(f_iterations=f_count, f_max_iter=f_count, b_iterations=b_count, b_max_iter=b_count)
    else:
        flat.update(f_max_iter=f_count if cfg["f_max_iter"] is None else cfg["f_max_iter"],
                    b_max_iter=b_count if cfg["b_max_iter"] is None else cfg["b_max_iter"])
    return flat_solve_arguments(flat), L
