"""Iteration budgets as certified settings: "the forward solve must reach tol in at most k steps" (and likewise
the adjoint solve), enforced by scaling the caps of f so that its certified bound stays small enough.

The a-priori counts (:mod:`lmdeq.solvers.iterations`) are non-decreasing in the bound L: n(L) =
``apriori_iterations(L, tol, tau)`` for the forward solve from z0 = 0, ``adjoint_apriori_iterations`` for the
adjoint from v (both the least N with x_N = q^N (times L for the adjoint) <= tol a / (1 + tol b), q = 1 - tau +
tau L, a = 1/(1 + L), b = L/(1 - L)). The budget k therefore holds for every L <= L*(k), the largest L with
n(L) <= k, which :func:`bound_for_budget` finds by bisection on the exact count function (so it follows that
function whatever its closed form). Two budgets give L* = min(L*_forward, L*_backward).

Enforcement (:class:`Budget`): every capped layer's cap is multiplied by one factor rho in [0, 1] (its
``cap_scale``), the largest for which f's bound stays <= L* in the worst case until the next refresh — every
GroupNorm at its gamma cap gamma_max (the optimiser may move gamma up to it) and dropout at 1/(1-p) (the training
mode) — from the stored norm estimates (one read-back, then CPU arithmetic). A layer's bound min(rho cap, (1 +
margin) sigma_hat) is non-decreasing in rho and every rule is monotone in its children's bounds, so the bound is
non-decreasing in rho and bisection finds rho. It is redone whenever the estimates change (after every optimiser
step's refresh, after loading a state dict, at init), so the guarantee holds throughout training; rho is derived
from saved buffers and the config, so a resumed run recomputes the same value. The bound a solve uses is then
<= L* and its count <= k (checked at every resolution, :class:`lmdeq.models.solves.ResolvedSolves`).

Errors, each naming the setting: k < 1 (a solve from 0 needs a step); a tolerance below what the state's dtype
can resolve (:func:`reachable_tol`: 10 eps; at config time float64's, at the solve the state's dtype) or a
damping so strong that even L = 0 needs more than k steps; and an L* that no rho meets, because the parts of f
that no cap scales (residual paths, activations, fusion weights) already exceed it with every cap at 0.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .. import checks
from ..errors import ConfigError
from ..solvers import Solver, adjoint_apriori_iterations, apriori_iterations
from .constraints import capped_layers
from .lipschitz import lipschitz_bound

__all__ = ["reachable_tol", "bound_for_budget", "check_budget_tol", "Budget", "BUDGET_KEYS"]

BUDGET_KEYS = ("forward_budget", "backward_budget")
_TOL_EPS = 10.0      # a relative residual below ~10 eps of the dtype is rounding noise
_SAFETY = 1e-9       # enforce L <= L* (1 - 1e-9): float rounding in the bound's evaluation stays on the safe side


def reachable_tol(dtype: torch.dtype) -> float:
    """The smallest relative tolerance a solve in ``dtype`` can be certified to reach: 10 eps(dtype)."""
    return _TOL_EPS * torch.finfo(dtype).eps


def check_budget_tol(name: str, budget: int, tol: float, dtype: torch.dtype) -> None:
    """ConfigError naming ``name`` when ``tol`` is below :func:`reachable_tol` of ``dtype``."""
    floor = reachable_tol(dtype)
    if tol < floor:
        raise ConfigError(f"{name}={budget}: tol={tol:g} is below what {str(dtype).replace('torch.', '')} can "
                          f"reach (~{floor:.1e}, 10 eps): no bound can certify it; raise the solve's tol"
                          + (" or solve in float64" if dtype != torch.float64 else ""))


def bound_for_budget(budget: int, solver: Solver, adjoint: bool = False, name: str = "forward_budget") -> float:
    """L*: the largest L with a-priori count <= ``budget`` for ``solver``'s tol and damping (module docstring);
    ConfigError naming ``name`` when no L meets it."""
    k = checks.integer(name, budget, 1)
    check_budget_tol(name, k, solver.tol, torch.float64)
    tol, tau = solver.tol, solver.damping
    count = adjoint_apriori_iterations if adjoint else apriori_iterations
    at_zero = count(0.0, tol, tau)
    if at_zero > k:
        raise ConfigError(f"{name}={k} cannot be met: with damping tau={tau:g} even a bound L = 0 needs {at_zero} "
                          f"steps to reach tol={tol:g}; raise {name} or tau")
    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        if count(mid, tol, tau) <= k:
            lo = mid
        else:
            hi = mid
    return lo


class Budget:
    """The iteration budgets of a certified f: L* (``bound``) and the cap scale that enforces it (module
    docstring). ``budgets``: {'forward_budget': (k, forward solver), 'backward_budget': (k, adjoint solver)}
    (None entries left out)."""

    def __init__(self, f: nn.Module, budgets: Dict[str, tuple]):
        self.f = f
        self.budgets = {name: kv for name, kv in budgets.items() if kv[0] is not None}
        self.limits = {name: bound_for_budget(k, solver, adjoint=name.startswith("backward"), name=name)
                       for name, (k, solver) in self.budgets.items()}
        self.bound = min(self.limits.values()) if self.limits else None
        self.cap_scale = 1.0
        self._key = None

    def __bool__(self) -> bool:
        return self.bound is not None

    def describe(self) -> str:
        return ", ".join(f"{name}={k}" for name, (k, _) in self.budgets.items())

    def check_dtype(self, dtype: torch.dtype) -> None:
        """ConfigError when a budgeted solve's tol is below what ``dtype`` (the state's) can reach."""
        for name, (k, solver) in self.budgets.items():
            check_budget_tol(name, k, solver.tol, dtype)

    def _estimate_key(self, layers) -> tuple:
        return tuple((c.sigma.data_ptr(), c.sigma._version, c.cap, c.margin) for c in layers)

    def ensure(self) -> Optional[float]:
        """Enforce L* if the estimates changed since the last enforcement; returns the cap scale (None without a
        budget)."""
        if self.bound is None:
            return None
        layers = capped_layers(self.f)
        key = self._estimate_key(layers)
        if key != self._key:
            self.cap_scale = self.enforce(layers)
            self._key = key
        return self.cap_scale

    def worst_case_bound(self, layers, sigmas: torch.Tensor, rho: float) -> float:
        """f's worst-case bound (module docstring) with every cap scaled by ``rho``, from the CPU estimates."""
        leaf = {c: torch.clamp_max(sigmas[i] * (1.0 + c.margin), c.cap * rho) for i, c in enumerate(layers)}
        return lipschitz_bound(self.f, worst_case=True, leaf_values=leaf, allow_unbounded=True)

    @torch.no_grad()
    def enforce(self, layers) -> float:
        """Set every capped layer's cap_scale to the largest rho in [0, 1] with worst-case bound <= L*."""
        target = self.bound * (1.0 - _SAFETY)
        sigmas = torch.stack([c.sigma for c in layers]).cpu() if layers else torch.zeros(0)
        if self.worst_case_bound(layers, sigmas, 1.0) <= target:
            rho = 1.0
        else:
            floor = self.worst_case_bound(layers, sigmas, 0.0)
            if not floor <= target:
                raise ConfigError(
                    f"{self.describe()} cannot be met: it needs a certified bound L <= {self.bound:.4g}, but the parts "
                    f"of f that no cap scales already give L = {floor:.4g} with every cap at 0 (residual paths, "
                    "activations, GroupNorm gamma caps, fusion weights): lower those, or raise the budget")
            lo, hi = 0.0, 1.0
            for _ in range(48):
                mid = 0.5 * (lo + hi)
                if self.worst_case_bound(layers, sigmas, mid) <= target:
                    lo = mid
                else:
                    hi = mid
            rho = lo
        for c in layers:
            c.cap_scale = rho
        return rho
