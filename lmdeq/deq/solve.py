"""The DEQ layer: solve z* = f(z*) without building a graph, then attach gradients.

``deq_solve(f, z0, solver=..., max_iter=..., tol=..., stop_mode=..., iterations=..., solver_kwargs=...,
backward=...)``: the forward solve takes the solver contract's arguments (:mod:`lmdeq.solvers`); ``backward`` is
how gradients are computed, an object of :mod:`lmdeq.deq.backward` (``Implicit(...)``, ``JFB()``,
``Phantom(...)``, None) or its shorthand string (``'implicit'``, ``'jfb'``, ``'phantom'``, ``'none'``).

The keywords of the backward pass that deq_solve took before the backward objects (``b_solver``, ``b_max_iter``,
``b_tol``, ``b_stop_mode``, ``b_iterations``, ``b_solver_kwargs``, ``b_x0``, ``phantom_steps``, ``phantom_tau``)
still work, with a DeprecationWarning naming the object to pass instead; as before, they apply only to the
backward method they belong to. (The ``b_`` names live on in flat configs, :mod:`lmdeq.deq.flat`.)

CUDA graphs (``graph=GraphedProblem(...)``, :mod:`lmdeq.deq.graphed`): fixed-count fixed-point solves on a
CUDA device are replayed as CUDA graphs. Profiler ranges (``torch.profiler.record_function``):
``lmdeq::forward_solve``, ``lmdeq::tracked_f`` and ``lmdeq::adjoint_solve`` mark the three parts of a solve
(see :mod:`lmdeq.bench.profile`).

``f`` maps a state (tensor, or list/tuple of tensors, batch first) to a state of the same structure and
closes over its inputs (the injection) and parameters.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Optional

import torch
from torch import nn
from torch._C._functorch import maybe_current_level
from torch.profiler import record_function

from .. import checks
from ..deprecation import deprecated
from ..errors import ConfigTypeError, UnsupportedError
from ..solvers import SolverInfo, StateLayout, get_solver
from ..solvers.state import KNOWN_OPTIONS
from .adjoint import implicit_gradient
from .backward import JFB, Backward, Implicit, Phantom, as_backward
from .graphed import GraphedProblem
from .jacobian import jacobian_pair as evaluation_pair

__all__ = ["deq_solve", "DEQ", "LEGACY_KEYWORDS", "FUNC_TRANSFORMS"]

FUNC_TRANSFORMS = ("deq_solve: torch.func transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap) are not supported: "
                   "the solve runs data-dependent loops outside autograd and its implicit gradient is an autograd "
                   "Function without functorch rules. Use torch.autograd.grad / .backward() for gradients (with "
                   "torch.func.functional_call for other parameters: that works), and a batch dimension or a loop "
                   "instead of vmap.")

# The keywords deq_solve took before the backward objects, and the field each sets (deprecated).
_LEGACY_IMPLICIT = {"b_solver": "solver", "b_max_iter": "max_iter", "b_tol": "tol", "b_stop_mode": "stop_mode",
                    "b_iterations": "iterations", "b_solver_kwargs": "solver_kwargs", "b_x0": "x0"}
_LEGACY_PHANTOM = {"phantom_steps": "steps", "phantom_tau": "tau"}
LEGACY_KEYWORDS = tuple(_LEGACY_IMPLICIT) + tuple(_LEGACY_PHANTOM)


def _spelled(cls: type, fields: dict) -> str:
    return f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def _hint(unknown) -> str:
    """Advice for keywords deq_solve does not take: a solver's own option goes in solver_kwargs; a near miss
    of one of deq_solve's arguments is named."""
    solver_options = [k for k in unknown if k in KNOWN_OPTIONS]
    if solver_options:
        spelled = ", ".join(f"{k!r}: ..." for k in solver_options)
        return f": {solver_options} are options of the solver, pass them as solver_kwargs={{{spelled}}}"
    own = [p for p in inspect.signature(deq_solve).parameters if p not in ("f", "z0", "deprecated")]
    close = {k: difflib.get_close_matches(k, own, n=1) for k in unknown}
    named = [f"{k!r} (did you mean {c[0]!r}?)" for k, c in close.items() if c]
    return f"; {', '.join(named)}" if named else f"; deq_solve takes {own}"


def resolve_backward(backward, legacy: dict, caller: str = "deq_solve") -> Backward:
    """The backward object of ``backward`` and the deprecated keywords ``legacy`` (see the module docstring);
    a keyword deq_solve never took is a TypeError naming it."""
    unknown = sorted(set(legacy) - set(LEGACY_KEYWORDS))
    if unknown:
        raise ConfigTypeError(f"{caller} got unexpected keyword argument(s) {unknown}{_hint(unknown)}")
    if not legacy:
        return as_backward(backward)
    if not isinstance(backward, str):
        raise ConfigTypeError(f"{caller}: {sorted(legacy)} cannot be combined with backward={backward!r}; give every "
                              "setting of the backward pass in the backward object")
    implicit = {_LEGACY_IMPLICIT[k]: v for k, v in legacy.items() if k in _LEGACY_IMPLICIT}
    phantom = {_LEGACY_PHANTOM[k]: v for k, v in legacy.items() if k in _LEGACY_PHANTOM}
    advice = " and ".join(f"backward={_spelled(cls, fields)}" for cls, fields in ((Implicit, implicit),
                                                                                   (Phantom, phantom)) if fields)
    deprecated(f"{caller}: the keywords {', '.join(sorted(legacy))} are deprecated; pass {advice}")
    if backward == "implicit":
        return Implicit(**implicit)
    if backward == "phantom":
        return Phantom(**phantom)
    return as_backward(backward)   # (the keywords of another method do not apply, as before)


def deq_solve(f: Callable, z0, *, solver="anderson", max_iter: int = 40, tol: float = 1e-3, stop_mode: str = "abs",
              iterations: Optional[int] = None, solver_kwargs: Optional[dict] = None, backward="implicit",
              on_backward: Optional[Callable[[dict], None]] = None, graph: Optional[GraphedProblem] = None,
              jacobian_pair: bool = False, **deprecated):
    """Find z* = f(z*) and return ``(z, info)`` where z carries gradients per ``backward``.

    ``info`` is the forward solver's info dict (see :mod:`lmdeq.solvers`). ``on_backward(info)`` is called
    with the adjoint solver's info when the implicit backward runs. ``iterations`` (and ``Implicit``'s) run
    a solve for exactly that many steps with no host sync; with ``graph`` as well (a fixed-point solver and a
    CUDA device) each such solve is one CUDA-graph replay, and ``info.cuda_graph`` says whether it was (False
    when the capture failed and the solve ran eagerly).

    ``jacobian_pair=True`` adds ``info.jacobian_pair``, a :class:`~lmdeq.deq.JacobianPair` ``(f0, z0)``: f
    evaluated at the solved z*, with z* (detached from the solve, requiring grad) on f0's autograd graph, in the
    user's structure — what :func:`lmdeq.deq.jac_reg` and :func:`lmdeq.deq.power_method` take. With the
    implicit backward on an eager adjoint it is the tracked evaluation f(z*) the gradient needs anyway (no
    extra f-evaluation; z0 is then the state f received, views of the leaves); with ``JFB``, ``Phantom``, no
    backward (``None``, or grad disabled) or a graphed adjoint it costs one more f-evaluation at z* (under
    ``torch.enable_grad()``). Nothing else changes: z, its gradients and info's items are the same.
    """
    checks.boolean("jacobian_pair", jacobian_pair, where="deq_solve: ")
    if maybe_current_level() is not None:
        raise UnsupportedError(FUNC_TRANSFORMS)
    backward = resolve_backward(backward, deprecated)
    solve = get_solver(solver)
    layout = StateLayout(z0, "z0")
    kwargs = dict(max_iter=max_iter, tol=tol, stop_mode=stop_mode, iterations=iterations, **(solver_kwargs or {}))
    start = [p.detach() for p in layout.parts(z0)]
    if graph is not None and graph.usable(layout.device, solver, iterations, solver_kwargs):
        def body(g_f, static_z0):
            z, _, inf = solve(g_f, layout.external(list(static_z0)), **kwargs)
            return layout.parts(z), inf

        with record_function("lmdeq::forward_solve"):
            star, info = graph.run(("forward", solver, repr(sorted(kwargs.items()))), body, start, grad=False)
    else:
        with torch.no_grad(), record_function("lmdeq::forward_solve"):
            z_star, _, info = solve(f, layout.external(start), **kwargs)
        star = [p.detach() for p in layout.parts(z_star)]
    if backward is None or not torch.is_grad_enabled():
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
    """A deep equilibrium layer: ``DEQ(func, **config)(z0, *args)`` solves z = func(z, *args).

    ``config`` takes the keyword arguments of :func:`deq_solve` (an unknown key is an error, not a
    silently ignored setting; the deprecated backward keywords are turned into the backward object here, once).
    Returns ``(z, info)``; ``self.last_info`` keeps the latest forward info.
    """

    def __init__(self, func: Callable, **config):
        super().__init__()
        allowed = set(inspect.signature(deq_solve).parameters) - {"f", "z0", "deprecated"}
        unknown = sorted(set(config) - allowed - set(LEGACY_KEYWORDS))
        if unknown:
            raise ConfigTypeError(f"DEQ got unknown config key(s) {unknown}; valid keys: {sorted(allowed)}")
        legacy = {k: config.pop(k) for k in LEGACY_KEYWORDS if k in config}
        config["backward"] = resolve_backward(config.get("backward", "implicit"), legacy, "DEQ")
        self.func = func
        self.config = config
        self.last_info = None

    def forward(self, z0, *args, **kwargs):
        z, info = deq_solve(lambda z: self.func(z, *args, **kwargs), z0, **self.config)
        self.last_info = info
        return z, info
