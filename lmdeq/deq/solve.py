"""The DEQ layer: solve z* = f(z*) without building a graph, then attach gradients.

``deq_solve(f, z0, solver=Anderson(...), backward=Implicit(solver=FixedPoint(...)))``: the two halves of a solve
are objects configured alike: ``solver`` is the forward solve (a :class:`lmdeq.solvers.Solver` carrying its
settings), ``backward`` how gradients are computed (an object of :mod:`lmdeq.deq.backward`: ``Implicit(...)``,
whose adjoint is solved by its own solver object, ``JFB()``, ``Phantom(...)``, or None).

CUDA graphs (``graph=GraphedProblem(...)``, :mod:`lmdeq.deq.graphed`): exact-count fixed-point solves on a
CUDA device are replayed as CUDA graphs. Profiler ranges (``torch.profiler.record_function``):
``lmdeq::forward_solve``, ``lmdeq::tracked_f`` and ``lmdeq::adjoint_solve`` mark the three parts of a solve
(see :mod:`lmdeq.app.bench.profile`).

``f`` maps a state (tensor, or list/tuple of tensors, batch first) to a state of the same structure and
closes over its inputs (the injection) and parameters.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Callable, Optional

import torch
from torch import nn
from torch._C._functorch import maybe_current_level
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.profiler import record_function

from .. import checks
from ..errors import ConfigTypeError, UnsupportedError
from ..solvers import SOLVERS, Anderson, Solver, SolverInfo, StateLayout
from .adjoint import forward_mode_active, implicit_gradient, refuse_tangents
from .backward import JFB, Implicit, Phantom, as_backward
from .graphed import GraphedProblem
from .jacobian import jacobian_pair as evaluation_pair

__all__ = ["deq_solve", "DEQ", "FUNC_TRANSFORMS", "DEFAULT_SOLVER"]

FUNC_TRANSFORMS = ("deq_solve: torch.func transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap, linearize) and "
                   "make_fx tracing are not supported: "
                   "the solve runs data-dependent loops outside autograd and its implicit gradient is an autograd "
                   "Function without functorch rules. Use torch.autograd.grad / .backward() for gradients (with "
                   "torch.func.functional_call for other parameters: that works), and a batch dimension or a loop "
                   "instead of vmap.")
DEFAULT_SOLVER = Anderson(max_iter=40, tol=1e-3)
# Keywords that belong to a solver object: every field of a registered solver, and the spellings deq_solve took
# before the solver objects.
_SOLVER_SETTINGS = {f.name for cls in SOLVERS.values() for f in dataclasses.fields(cls)} | {
    "iterations", "solver_kwargs", "b_solver", "b_max_iter", "b_tol"}
_SOLVER_HINT = ("solver must be a Solver object, e.g. solver=lmdeq.solvers.Anderson(max_iter=30, tol=1e-3) "
                "(FixedPoint, Anderson, Broyden, AuthorsAnderson carry their own settings)")


def _hint(unknown) -> str:
    """Advice for keywords deq_solve does not take: a solver's setting goes in the solver object, a near miss
    of one of deq_solve's arguments is named."""
    settings = sorted(k for k in unknown if k in _SOLVER_SETTINGS)
    if settings:
        return f": {settings} are settings of the solver; {_SOLVER_HINT}"
    own = [p for p in inspect.signature(deq_solve).parameters if p not in ("f", "z0", "unknown")]
    close = {k: difflib.get_close_matches(k, own, n=1) for k in unknown}
    named = [f"{k!r} (did you mean {c[0]!r}?)" for k, c in close.items() if c]
    return f"; {', '.join(named)}" if named else f"; deq_solve takes {own}"


def check_solver(solver, where: str = "deq_solve") -> Solver:
    """``solver`` if it is a :class:`~lmdeq.solvers.Solver`, else an error saying what to pass."""
    if not isinstance(solver, Solver):
        raise ConfigTypeError(f"{where}: {_SOLVER_HINT}, got {solver!r}")
    return solver


def deq_solve(f: Callable, z0, *, solver: Solver = DEFAULT_SOLVER, backward=Implicit(),
              on_backward: Optional[Callable[[dict], None]] = None, graph: Optional[GraphedProblem] = None,
              jacobian_pair: bool = False, **unknown):
    """Find z* = f(z*) and return ``(z, info)`` where z carries gradients per ``backward``.

    ``solver``: the forward solve (default ``Anderson(max_iter=40, tol=1e-3)``); ``backward``: ``Implicit(...)``
    (default: its adjoint by ``FixedPoint(max_iter=40, tol=1e-6)`` from v), ``JFB()``, ``Phantom(...)`` or None.
    ``info`` is the forward solve's stats (:class:`lmdeq.solvers.SolverInfo`). ``on_backward(info)`` is called
    with the adjoint solve's stats when the implicit backward runs. A solver with ``exact=True`` runs exactly
    ``max_iter`` steps with no host sync; with ``graph`` as well (a FixedPoint solver and a CUDA device) each such
    solve is one CUDA-graph replay, and ``info.cuda_graph`` says whether it was (False when the capture failed
    and the solve ran eagerly).

    ``jacobian_pair=True`` adds ``info.jacobian_pair``, a :class:`~lmdeq.deq.JacobianPair` ``(f0, z0)``: f
    evaluated at the solved z*, with z* (detached from the solve, requiring grad) on f0's autograd graph, in the
    user's structure — what :func:`lmdeq.deq.jac_reg` and :func:`lmdeq.deq.power_method` take. With the
    implicit backward on an eager adjoint it is the tracked evaluation f(z*) the gradient needs anyway (no
    extra f-evaluation; z0 is then the state f received, views of the leaves); with ``JFB``, ``Phantom``, no
    backward (``None``, or grad disabled) or a graphed adjoint it costs one more f-evaluation at z* (under
    ``torch.enable_grad()``). Nothing else changes: z, its gradients and info's items are the same.

    Autograd transforms: first-order reverse mode works with every backward (.backward(), torch.autograd.grad,
    torch.func.functional_call, torch.utils.checkpoint); higher orders and forward mode through ``JFB`` and
    ``Phantom`` are those of their approximation. Refused with an :class:`~lmdeq.errors.UnsupportedError` naming
    the limitation, never answered wrongly: torch.func transforms and make_fx tracing (:data:`FUNC_TRANSFORMS`), a
    graph through the implicit backward (create_graph=True), a batched backward pass through it (vectorize=True),
    and forward-mode dual tensors through it or through a solve under torch.no_grad()
    (:mod:`lmdeq.deq.adjoint`).
    """
    if unknown:
        raise ConfigTypeError(f"deq_solve got unexpected keyword argument(s) {sorted(unknown)}{_hint(unknown)}")
    checks.boolean("jacobian_pair", jacobian_pair, where="deq_solve: ")
    if maybe_current_level() is not None or get_proxy_mode() is not None:   # a torch.func transform, make_fx
        raise UnsupportedError(FUNC_TRANSFORMS)
    check_solver(solver)
    backward = as_backward(backward)
    layout = StateLayout(z0, "z0")
    start = [p.detach() for p in layout.parts(z0)]
    if graph is not None and graph.usable(layout.device, solver):
        def body(g_f, static_z0):
            sol = solver.solve(g_f, layout.external(list(static_z0)))
            return layout.parts(sol.value), sol.stats

        with record_function("lmdeq::forward_solve"):
            star, info = graph.run(("forward", repr(solver)), body, start, grad=False)
    else:
        with torch.no_grad(), record_function("lmdeq::forward_solve"):
            sol = solver.solve(f, layout.external(start))
        info = sol.stats
        star = [p.detach() for p in layout.parts(sol.value)]
    if backward is None or not torch.is_grad_enabled():
        if backward is not None and forward_mode_active():   # dual inputs would lose their tangent here
            refuse_tangents(layout.check_output(f(layout.external(star))))
        out = layout.external(star)
    elif isinstance(backward, JFB):
        out = f(layout.external(star))
    elif isinstance(backward, Phantom):
        z = star
        for _ in range(backward.steps):
            fz = layout.check_output(f(layout.external(z)))
            z = [(1.0 - backward.tau) * zi + backward.tau * fi for zi, fi in zip(z, fz)]
        out = layout.external(z)
    elif not jacobian_pair:
        return implicit_gradient(f, layout, star, backward, on_backward, graph), info
    else:
        out, pair = implicit_gradient(f, layout, star, backward, on_backward, graph, keep_pair=True)
        if pair is not None:
            return out, _with_pair(info, pair)
    if not jacobian_pair:
        return out, info
    with record_function("lmdeq::jacobian_f"):
        pair = evaluation_pair(f, layout.external([p.detach() for p in star]))
    return out, _with_pair(info, pair)


def _with_pair(info, pair) -> SolverInfo:
    """``info`` carrying ``pair`` as ``info.jacobian_pair`` (a plain dict from a user's solver becomes a
    SolverInfo with the same items)."""
    if not isinstance(info, SolverInfo):
        info = SolverInfo(info)
    info.jacobian_pair = pair
    return info


class DEQ(nn.Module):
    """A deep equilibrium layer: ``DEQ(func, solver=..., backward=...)(z0, *args)`` solves z = func(z, *args).

    ``config`` takes the keyword arguments of :func:`deq_solve` (an unknown key is an error, not a silently
    ignored setting; the solver and backward objects are checked here, once). Returns ``(z, info)``;
    ``self.last_info`` keeps the latest forward info.
    """

    def __init__(self, func: Callable, **config):
        super().__init__()
        allowed = set(inspect.signature(deq_solve).parameters) - {"f", "z0", "unknown"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigTypeError(f"DEQ got unknown config key(s) {unknown}; valid keys: {sorted(allowed)}"
                                  + (f" ({_SOLVER_HINT})" if {"max_iter", "tol", "stop_mode"} & set(unknown) else ""))
        if "solver" in config:
            check_solver(config["solver"], "DEQ")
        config["backward"] = as_backward(config.get("backward", Implicit()))
        self.func = func
        self.config = config
        self.last_info = None

    def forward(self, z0, *args, **kwargs):
        z, info = deq_solve(lambda z: self.func(z, *args, **kwargs), z0, **self.config)
        self.last_info = info
        return z, info
