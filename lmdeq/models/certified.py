"""A certified DEQ layer: :class:`CertifiedDEQ` solves z* = f(z*, x) for an f built from certified blocks, with
iteration counts that the certified bound of f guarantees — the one solve path of lmdeq.models (the MDEQ
classifier runs its cell through it).

    deq = CertifiedDEQ(f)                    # f(z, x): blocks of lmdeq.models; L = lipschitz_bound(f) < 1
    z = deq(x)                               # z* = f(z*, x) from z0 = 0, gradients by the implicit backward

What it does, in order, at construction: refuse any part of f without a Lipschitz rule (:func:`lipschitz_bound`
names it); estimate the norms of every capped layer of f (one batched op call per kind, ``init_power_iters``);
enforce the iteration budgets (:mod:`lmdeq.models.budget`); refuse L >= 1 when a solve needs an a-priori count.
At every forward pass: re-estimate layers whose weights changed in place; resolve the solves' ``Apriori()`` counts
from the cached bound (:class:`lmdeq.models.solves.ResolvedSolves`: hysteresis for exact counts, budgets
asserted); solve with :func:`lmdeq.deq_solve` with every capped layer's effective weight computed once
(``frozen_weights``). With the default solves (:data:`APRIORI_FORWARD` / :data:`APRIORI_BACKWARD`: exactly the
certified counts, no convergence check, no host sync) and ``cuda_graphs=True`` each solve on a CUDA device is one
CUDA-graph replay, as the MDEQ classifier's. After every ``optimizer.step()``: :meth:`constraint_step` (norm
estimates with ``power_iters`` warm-started iterations, gamma projection, budget enforcement, composed norms).

The input enters f as its second argument: ``injection(x)`` when an ``injection`` module is given (computed once
per forward pass, outside the solve), else x itself; z0 is zeros of the injection's shape unless ``z0`` (or a
``state_shape`` callable) says otherwise.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import nn

from .. import checks
from ..cuda_graphs import GraphCache
from ..deq import GraphedProblem, Implicit, deq_solve
from ..deq.backward import Backward, as_backward
from ..errors import ConfigTypeError, NonFiniteError, UnsupportedError
from ..solvers import Apriori, FixedPoint, Result, Solver
from .budget import Budget
from .constraints import (CachedBound, capped_layers, composed_estimates, frozen_weights, project_gammas,
                          refresh_stale_estimates, update_norm_estimates)
from .lipschitz import lipschitz_bound
from .solves import NotContractiveError, ResolvedSolves, SolveStats, _counted, budget_solvers, check_solve_objects
from .verified import verified_lipschitz_bound

__all__ = ["CertifiedDEQ", "APRIORI_FORWARD", "APRIORI_BACKWARD"]

APRIORI_FORWARD = FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True)
APRIORI_BACKWARD = Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True))


def _parts(f: nn.Module) -> str:
    """The bounds of f's top-level parts, for an error message ('0 ConvexResidual: 1.5, 1 AddInput: 1')."""
    out = []
    for name, child in f.named_children():
        try:
            out.append(f"{name} {type(child).__name__}: {lipschitz_bound(child, allow_unbounded=True):.4g}")
        except (UnsupportedError, RuntimeError):   # a part without a rule of its own (a ModuleList): not listed
            continue
    return "bounds of its parts: " + (", ".join(out) if out else "-")


class CertifiedDEQ(nn.Module):
    """z* = f(z*, injection(x)) with certified iteration counts (module docstring).

    Args:
        f: the map, ``f(z, x) -> z`` (a tensor or a list of tensors, batch first), built from certified blocks.
        injection: optional module applied to the input once per forward pass (its Lipschitz constant does not
            matter: it acts on x only).
        forward, backward: the solver of the forward solve and the backward method (objects of
            :func:`lmdeq.deq_solve`); ``max_iter=Apriori()`` takes the count from the bound.
        forward_budget, backward_budget: iteration budgets k (module :mod:`lmdeq.models.budget`): the caps of f
            are scaled so that the a-priori count stays <= k.
        power_iters, init_power_iters: warm-started power iterations per :meth:`constraint_step` / at construction
            and for a layer whose weights changed in place.
        cuda_graphs: replay exact-count solves on CUDA as CUDA graphs.
        strict: refuse at construction an f with an unbounded part or, where a count is needed, with L >= 1
            (False: report them when a count is resolved; the MDEQ classifier, whose original variant has no bound).
        hint: what the L >= 1 error advises (the settings to change).
    """

    def __init__(self, f: nn.Module, *, injection: Optional[nn.Module] = None,
                 forward: Solver = APRIORI_FORWARD, backward: Optional[Backward] = APRIORI_BACKWARD,
                 forward_budget: Optional[int] = None, backward_budget: Optional[int] = None,
                 power_iters: int = 2, init_power_iters: int = 30, cuda_graphs: bool = True, strict: bool = True,
                 hint: str = ""):
        super().__init__()
        if not isinstance(f, nn.Module):
            raise ConfigTypeError(f"CertifiedDEQ: f must be an nn.Module built from certified blocks, got {f!r}")
        if not isinstance(forward, Solver):
            raise ConfigTypeError(f"CertifiedDEQ: forward must be a Solver object, got {forward!r}")
        backward = as_backward(backward)
        self.f = f
        self.injection = injection
        self.power_iters = checks.integer("power_iters", power_iters, 1, where="CertifiedDEQ: ")
        self.init_power_iters = checks.integer("init_power_iters", init_power_iters, 1, where="CertifiedDEQ: ")
        self.cuda_graphs = checks.boolean("cuda_graphs", cuda_graphs, where="CertifiedDEQ: ")
        self.strict = checks.boolean("strict", strict, where="CertifiedDEQ: ")
        if strict:
            check_solve_objects(forward, backward, forward_budget=forward_budget, backward_budget=backward_budget)
        self.solves = ResolvedSolves(forward, backward, {"forward": forward_budget, "backward": backward_budget}, hint)
        self.budget = Budget(f, budget_solvers(forward, backward, forward_budget, backward_budget))
        self.graphs = GraphCache(max_graphs=8)
        self.stats = SolveStats()
        self._bound = CachedBound(f, allow_unbounded=not strict)
        self.register_load_state_dict_post_hook(self.budget_after_load)
        if capped_layers(f) or composed_estimates(f):
            self.refresh(self.init_power_iters, project=False)   # (parameters as initialised or given)
        if strict:
            L = self.lipschitz_bound()
            if (_counted(forward, backward) or self.budget) and not L < 1.0:
                raise NotContractiveError(f"CertifiedDEQ: the certified bound L = {L:.4g} of f is not < 1, so no "
                                          f"a-priori iteration count exists{hint} ({_parts(f)}); lower the caps of "
                                          "f's layers (cap=), its activations' s or its residual weights, or set a "
                                          "budget")

    # -- upkeep ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self, n_iter: int, project: bool = True) -> None:
        """Every norm estimate of f with ``n_iter`` iterations, the gammas projected (``project``), the budget
        enforced, then the composed norms (which read the effective weights the budget's cap scale gives)."""
        layers = capped_layers(self.f)
        if layers:
            update_norm_estimates(layers, n_iter)
        if project:
            project_gammas(self.f)
        self.budget.ensure()
        for composed in composed_estimates(self.f):
            composed.refresh(n_iter)

    def constraint_step(self, n_iter: Optional[int] = None) -> None:
        """After ``optimizer.step()``: the upkeep of :meth:`refresh` with ``n_iter`` (default ``power_iters``)
        warm-started iterations."""
        self.refresh(self.power_iters if n_iter is None else n_iter)

    def refresh_stale(self) -> None:
        """Re-estimate (``init_power_iters``) what changed in place since its estimate, then keep the budget."""
        if refresh_stale_estimates(self.f, self.init_power_iters):
            self.budget.ensure()
            for composed in composed_estimates(self.f):
                if composed.estimate_is_stale():
                    composed.refresh(self.init_power_iters)
        elif self.budget:
            self.budget.ensure()   # (estimates loaded into f alone, or set by hand)

    def budget_after_load(self, _module: nn.Module, _incompatible) -> None:
        """``load_state_dict`` post-hook (torch calls it once the children are loaded), registered by this DEQ and
        by a model that keeps it as a plain attribute (whose loading never reaches this module): the budget's cap
        scale from the loaded estimates, so every layer's own bound is the budgeted one at once. A state dict
        loaded into ``f`` alone is caught by ``budget.ensure()`` before the next bound or solve."""
        self.budget.ensure()

    def lipschitz_bound(self) -> float:
        """The certified bound L of z -> f(z, x) (any x) in the l2 norm of the state per sample, in f's current
        mode (:func:`lmdeq.models.lipschitz_bound`; cached while nothing changes)."""
        self.refresh_stale()
        return self._bound()

    def verified_lipschitz_bound(self) -> float:
        """The certified bound of :meth:`lipschitz_bound` with every capped layer's norm replaced by a verified
        upper bound (:func:`lmdeq.models.verified_lipschitz_bound`): it rests on no power-iteration estimate, so
        it holds even where an estimate fell short of its margin. Not cached (an FFT and SVDs per layer)."""
        self.refresh_stale()
        return verified_lipschitz_bound(self.f, allow_unbounded=not self.strict)

    # -- solving ---------------------------------------------------------------------------------------------
    @contextmanager
    def frozen(self):
        """f's effective weights computed once for the block (f's own ``frozen_weights`` when it has one)."""
        own = getattr(self.f, "frozen_weights", None)
        with (own() if callable(own) else frozen_weights(self.f)):
            yield

    def solve(self, fn: Callable, z0, *, graph: Optional[GraphedProblem] = None, jacobian_pair: bool = False,
              max_iter: Optional[int] = None, bound: Optional[Callable[[], float]] = None):
        """(z, info) of the DEQ solve of ``fn`` (z -> f(z, x) for this call's x) from ``z0``: counts resolved
        against ``bound()`` (default :meth:`lipschitz_bound`), the solve run with frozen weights, its statistics
        kept (:attr:`last_info`). ``max_iter``: this call's forward cap (a checked solve with an int count)."""
        self.refresh_stale()
        if self.budget:
            first = z0[0] if isinstance(z0, (list, tuple)) else z0
            self.budget.check_dtype(first.dtype)
        solver, backward, L = self.solves.resolve(self.lipschitz_bound if bound is None else bound, max_iter)
        self.stats.bound_used(L)
        with self.frozen():
            z, info = deq_solve(fn, z0, solver=solver, backward=backward, on_backward=self.stats.backward,
                                graph=graph, jacobian_pair=jacobian_pair)
        self.stats.forward(info, self.graphs.captures)
        # Checked solves read their residuals back anyway; a-priori (sync-free) solves are not read here.
        if not solver.exact and info.result is Result.NONFINITE:
            raise NonFiniteError("the forward solve produced NaN/Inf: non-finite input images or weights")
        return z, info

    def graphed(self, x: torch.Tensor) -> GraphedProblem:
        """f for the input ``x`` as a :class:`~lmdeq.deq.GraphedProblem` (the input is the per-call input; f's
        parameters, buffers and effective caps are part of the key)."""
        f = self.f
        key = (f.training, tuple(t.data_ptr() for t in f.parameters()), tuple(t.data_ptr() for t in f.buffers()),
               tuple(c.effective_cap() for c in capped_layers(f)))

        @contextmanager
        def bind(static):
            with self.frozen():
                yield lambda z: f(z, static[0])

        return GraphedProblem(self.graphs, key, [x], bind)

    def forward(self, x: torch.Tensor, z0=None):
        """z* = f(z*, injection(x)) from ``z0`` (default: zeros of the injection's shape)."""
        inj = x if self.injection is None else self.injection(x)
        if z0 is None:
            z0 = torch.zeros_like(inj)
        graph = self.graphed(inj) if self.cuda_graphs and torch.is_tensor(inj) and self.graphs.enabled(inj.device) \
            else None
        z, _ = self.solve(lambda z: self.f(z, inj), z0, graph=graph)
        return z

    @property
    def last_info(self) -> dict:
        """The latest solve's statistics as python numbers (f_nstep, f_residual, converged, b_nstep, b_residual,
        cuda_graph, graph_captures, lipschitz_bound). Reading syncs."""
        return self.stats.read()

    def extra_repr(self) -> str:
        budget = f", {self.budget.describe()}" if self.budget else ""
        return f"forward={self.solves.forward!r}, backward={self.solves.backward!r}{budget}"
