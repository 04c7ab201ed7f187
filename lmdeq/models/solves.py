"""An MDEQ's two solves: their config sections, the one rule about the certified bound, their resolution against
it, and the statistics of the latest solve.

A model config holds the solves as two sections, the JSON forms of the objects :func:`lmdeq.deq_solve` takes
(:meth:`lmdeq.solvers.Solver.to_config`, :func:`lmdeq.deq.backward_to_config`)::

    "forward":  {"name": "fixed_point", "max_iter": {"apriori": 2}, "tol": 0.001, "stop_mode": "rel", ...}
    "backward": {"method": "implicit", "solver": {"name": "fixed_point", ...}, "x0": "v"}

``mdeq(..., forward=FixedPoint(...), backward=Implicit(...))`` takes the objects (or those dicts) and stores the
dicts. ``max_iter=Apriori()`` is the count the certified bound L guarantees (:func:`lmdeq.solvers.apriori_iterations`
for the forward solve from z0 = 0, :func:`lmdeq.solvers.adjoint_apriori_iterations` for the adjoint from v); with
``exact=True`` the solve runs exactly that count, with no convergence check and no host sync (and on CUDA, one
CUDA-graph replay), else the count is its cap and it still stops at tol. :func:`check_solves` states when that is
possible — the one place of the rule — and :class:`ResolvedSolves` resolves the counts at every forward pass,
with hysteresis (:class:`lmdeq.solvers.SettledCounts`) for exact counts, which key CUDA graphs.

Iteration budgets (``forward_budget`` / ``backward_budget`` = k, :mod:`lmdeq.models.budget`): the solve must reach
its tol within k steps by its a-priori count; :func:`check_solves` checks that the setting can hold, and
:class:`ResolvedSolves` asserts at every resolution that the count the bound gives is <= k. A bound L >= 1 where a
count is needed is a :class:`NotContractiveError` naming the settings to change.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

from ..deq import Implicit, backward_from_config, backward_to_config
from ..deq.backward import Backward
from ..errors import ConfigError
from ..solvers import (FixedPoint, SettledCounts, Solver, adjoint_apriori_iterations, apriori_iterations,
                       solver_from_config)
from .budget import bound_for_budget

__all__ = ["solves_of", "solve_sections", "needs_bound", "check_solves", "check_solve_objects", "check_budgets",
           "ResolvedSolves", "SolveStats", "NotContractiveError"]


class NotContractiveError(ConfigError, RuntimeError):
    """The certified bound L of f is not < 1 where an a-priori count (or a budget) needs it."""


def solve_sections(forward, backward) -> dict:
    """The config sections ``forward`` / ``backward`` of solver and backward objects (or their dicts)."""
    return {"forward": solver_from_config(forward).to_config(),
            "backward": backward_to_config(backward_from_config(backward))}


def solves_of(cfg: dict) -> Tuple[Solver, Backward]:
    """The (forward solver, backward object) of a model config."""
    return solver_from_config(cfg["forward"]), backward_from_config(cfg["backward"])


def _solvers(forward: Solver, backward: Backward) -> List[Tuple[str, Solver]]:
    """(name, solver) of the forward solve and, for the implicit backward, of its adjoint solve."""
    return [("forward", forward)] + ([("backward solver", backward.solver)] if isinstance(backward, Implicit) else [])


def _counted(forward: Solver, backward: Backward) -> List[Tuple[str, Solver]]:
    """The solves among :func:`_solvers` whose max_iter is an Apriori count to resolve against the bound."""
    return [(name, s) for name, s in _solvers(forward, backward) if s.needs_bound]


def needs_bound(cfg: dict) -> bool:
    """Whether the config's solves take an iteration count from the certified bound (an Apriori max_iter)."""
    return bool(_counted(*solves_of(cfg)))


def check_solves(cfg: dict) -> None:
    """The rule of a-priori counts: they exist only under the certified bound (lipschitz=True with
    constraint='certified'); they are derived for stop_mode='rel' from the zero initial state and, for the adjoint,
    from the start x0='v'; an exact count (no checks) counts Picard steps, so it needs a FixedPoint solver. The
    same for iteration budgets (:func:`check_budgets`)."""
    forward, backward = solves_of(cfg)
    certified = bool(cfg["lipschitz"]) and cfg.get("constraint") == "certified"
    what = "lipschitz=False" if not cfg["lipschitz"] else f"constraint={cfg.get('constraint')!r}"
    budgets = {k: cfg.get(k) for k in ("forward_budget", "backward_budget") if cfg.get(k) is not None}
    if budgets and not certified:
        raise ConfigError(f"{what} certifies no bound, so an iteration budget ({', '.join(sorted(budgets))}) cannot "
                          "be guaranteed: use lipschitz=True with constraint='certified', or no budget")
    check_solve_objects(forward, backward, certified=certified, uncertified=what, **budgets)


def check_solve_objects(forward: Solver, backward: Backward, *, certified: bool = True,
                        uncertified: str = "this model", forward_budget: Optional[int] = None,
                        backward_budget: Optional[int] = None) -> None:
    """:func:`check_solves` for the solve objects of a DEQ whose f has (``certified``) or lacks a certified bound."""
    for name, solver in _solvers(forward, backward):
        if not solver.needs_bound and solver.max_iter < 1:
            raise ConfigError(f"the {name}'s max_iter must be >= 1 (a model's state starts at 0: it needs at least "
                              f"one step), got {solver.max_iter}")
    check_budgets(forward, backward, forward_budget, backward_budget)
    counted = _counted(forward, backward)
    if not counted:
        return
    if not certified:
        raise ConfigError(f"{uncertified} certifies no bound, so there is no a-priori iteration count: give the "
                          f"{' and '.join(n for n, _ in counted)} an int max_iter (and exact=False)")
    for name, solver in counted:
        if solver.stop_mode != "rel":
            raise ConfigError(f"the a-priori iteration count (max_iter=Apriori()) is derived for stop_mode='rel' from "
                              f"the zero initial state; set the {name}'s stop_mode='rel'")
        if solver.exact and not isinstance(solver, FixedPoint):
            raise ConfigError(f"an exact a-priori count counts Picard steps: the {name} must be a FixedPoint solver "
                              f"(got {type(solver).__name__}), or exact=False")
    if any(name == "backward solver" for name, _ in counted) and backward.x0 != "v":
        raise ConfigError("the a-priori adjoint count is derived for the adjoint started at v: set the backward's "
                          "x0='v'")


def budget_solvers(forward: Solver, backward: Backward, forward_budget, backward_budget) -> dict:
    """{'forward_budget': (k, forward solver), 'backward_budget': (k, adjoint solver)} for the budgets set."""
    out = {}
    if forward_budget is not None:
        out["forward_budget"] = (forward_budget, forward)
    if backward_budget is not None:
        out["backward_budget"] = (backward_budget, backward.solver if isinstance(backward, Implicit) else None)
    return out


def check_budgets(forward: Solver, backward: Backward, forward_budget=None, backward_budget=None) -> None:
    """A budget bounds a solve's a-priori count, so it needs what that count needs: stop_mode='rel' (from the
    zero state), and for the backward budget an implicit backward whose adjoint starts at v; and a k and tol that
    some bound meets (:func:`lmdeq.models.budget.bound_for_budget`). ConfigError naming the setting."""
    for name, (k, solver) in budget_solvers(forward, backward, forward_budget, backward_budget).items():
        if solver is None:
            raise ConfigError(f"{name}={k} bounds the implicit backward's adjoint solve, but the backward method is "
                              f"{'none' if backward is None else type(backward).__name__}: use Implicit or no "
                              f"{name}")
        if solver.stop_mode != "rel":
            raise ConfigError(f"{name}={k}: the a-priori count a budget bounds is derived for stop_mode='rel' from "
                              f"the zero initial state; set the {'forward' if name == 'forward_budget' else 'backward'}"
                              " solver's stop_mode='rel'")
        if name == "backward_budget" and backward.x0 != "v":
            raise ConfigError(f"{name}={k}: the adjoint count is derived for the adjoint started at v: set the "
                              "backward's x0='v'")
        bound_for_budget(k, solver, adjoint=name == "backward_budget", name=name)


class ResolvedSolves:
    """The solve objects of a DEQ (``ResolvedSolves(forward, backward, budgets)``, or ``ResolvedSolves(cfg)`` for a
    model config's), resolved against the certified bound at every call; ``budgets`` ({'forward': k, 'backward':
    k}) are asserted at every resolution; ``hint``: what the L >= 1 error advises."""

    def __init__(self, forward, backward: Backward = None, budgets: Optional[dict] = None, hint: str = ""):
        if isinstance(forward, dict) and backward is None and budgets is None:   # ResolvedSolves(model config)
            cfg = forward
            forward, backward = solves_of(cfg)
            budgets = {"forward": cfg.get("forward_budget"), "backward": cfg.get("backward_budget")}
        self.forward, self.backward = forward, backward
        self.budgets = {k: v for k, v in (budgets or {}).items() if v is not None}
        self.hint = hint
        self.settled = SettledCounts()


    def resolve(self, bound: Callable[[], float], max_iter: Optional[int] = None
                ) -> Tuple[Solver, Backward, Optional[float]]:
        """(forward solver, backward, L when one was needed, else None); ``bound()`` is called only when a
        count is needed; ``max_iter`` replaces the forward solve's for this call (a checked solve with an int
        count: the released JR recipe's random threshold)."""
        forward, backward = self.forward, self.backward
        if max_iter is not None:
            if forward.exact or forward.needs_bound:
                raise ConfigError("MDEQClassifier: max_iter applies to checked solves with a set count; this model's "
                                  "forward solve runs an a-priori count")
            forward = forward.replace(max_iter=max_iter)
        if not _counted(forward, backward) and not self.budgets:
            return forward, backward, None
        L = bound()
        if not L < 1.0:
            raise NotContractiveError(
                f"the certified bound L = {L:.4g} of f is not < 1, so no a-priori iteration count exists (the "
                f"{' and '.join(n for n, _ in _counted(forward, backward)) or 'budgeted'} solve needs one){self.hint}")
        self._check_budget("forward", forward, L, adjoint=False)
        if isinstance(backward, Implicit):
            self._check_budget("backward", backward.solver, L, adjoint=True)
        forward = self._settle(forward, L, "forward", adjoint=False)
        if isinstance(backward, Implicit) and backward.solver.needs_bound:
            backward = Implicit(solver=self._settle(backward.solver, L, "adjoint", adjoint=True), x0=backward.x0)
        return forward, backward, L

    def _check_budget(self, side: str, solver: Solver, L: float, adjoint: bool) -> None:
        """The guarantee of a budget: the a-priori count for L is within it (the caps were scaled for it)."""
        k = self.budgets.get(side)
        if k is None:
            return
        count = (adjoint_apriori_iterations if adjoint else apriori_iterations)(L, solver.tol, solver.damping)
        if count > k:
            raise RuntimeError(f"{side}_budget={k} violated: the certified bound L = {L:.6g} needs {count} steps "
                               "(the caps were not scaled for the current estimates: a bug)")

    def _settle(self, solver: Solver, L: float, name: str, adjoint: bool) -> Solver:
        if not solver.needs_bound:
            return solver
        slack = solver.max_iter.slack
        resolved = solver.with_bound(L, adjoint=adjoint)
        if solver.exact:
            resolved = resolved.replace(max_iter=self.settled.settle(name, resolved.max_iter, slack))
        return resolved


class SolveStats:
    """The statistics of an MDEQ's latest forward (and backward) solve, kept as tensors until read.

    ``read()`` gives python numbers: f_nstep (forward f-evaluations), f_residual (final relative residual, batch
    mean), converged (fraction of the batch below its tolerance), b_nstep and b_residual (after a backward pass;
    0 and nan before), cuda_graph (whether the forward solve was a CUDA-graph replay), graph_captures (CUDA-graph
    captures so far), and lipschitz_bound when the solve used it. Reading syncs with the device."""

    def __init__(self):
        self._info = {}

    def bound_used(self, bound: Optional[float]) -> None:
        """The certified bound the latest solve's counts came from (None: it used none)."""
        self._info.pop("lipschitz_bound", None)
        if bound is not None:
            self._info["lipschitz_bound"] = bound

    def forward(self, info: dict, graph_captures: int) -> None:
        """A forward solve's info (:class:`lmdeq.solvers.SolverInfo`); the backward figures reset."""
        self._info.update(f_nstep=info["f_evals"].long(), f_residual=info["rel_lowest"].mean(),
                          converged=info["converged"].float().mean(), b_nstep=0, b_residual=math.nan,
                          cuda_graph=getattr(info, "cuda_graph", False), graph_captures=graph_captures)

    def backward(self, info: dict) -> None:
        """The adjoint solve's info (deq_solve's ``on_backward``)."""
        self._info.update(b_nstep=info["f_evals"].long(), b_residual=info["rel_lowest"].mean())

    def unrolled(self, layers: int, rel: torch.Tensor, tol: float, backprop: bool) -> None:
        """An unrolled forward pass of ``layers`` f-applications with last-step relative changes ``rel`` (B,);
        as many vector-Jacobian products when it will be backpropagated."""
        self._info.update(f_nstep=layers, f_residual=rel.mean(), converged=(rel < tol).float().mean(),
                          b_nstep=layers if backprop else 0, b_residual=math.nan, cuda_graph=False)

    def read(self) -> dict:
        return {k: (v.item() if torch.is_tensor(v) else v) for k, v in self._info.items()}
