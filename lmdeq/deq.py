"""The DEQ layer: solve z* = f(z*) without building a graph, then attach gradients.

Backward modes (``backward=``):

* ``'implicit'`` — implicit function theorem. With z* = f(z*, theta) and upstream gradient v = dL/dz*,

      dL/dtheta = g^T df/dtheta(z*),   where   g = J_f(z*)^T g + v

  is itself a fixed point, solved with any solver (``b_solver``, own ``b_max_iter``/``b_tol``). It is an
  ``autograd.Function`` (an identity in the forward pass whose backward returns g), applied to the
  tracked evaluation f(z*); autograd then carries g into f's parameters and inputs. That evaluation is
  differentiable in z* as well, and the adjoint's vector-Jacobian products J_f^T g run on its graph, so
  f is evaluated with autograd once per step. No tensor hooks, so it is safe under
  DistributedDataParallel and re-entrant backward. The state f receives for that evaluation is marked
  (:func:`is_solved_state`) and flagged once the adjoint solve is done (:func:`adjoint_done`): the rest of
  the backward pass only needs the gradient into f's parameters and inputs, so an operator of f may skip
  the gradient with respect to z* (the MDEQ's convolutions on z* do).
* ``'jfb'`` — Jacobian-free backprop: dL/dtheta ~ v^T df/dtheta(z*) (one tracked f-evaluation).
* ``'phantom'`` — ``phantom_steps`` damped tracked steps z <- (1 - phantom_tau) z + phantom_tau f(z) from z*.
* ``'none'`` — return z* detached.

CUDA graphs (``graph=GraphedProblem(...)``): when a solve is a fixed-point solve (``'fixed_point'``,
the only solver graphed: Anderson's and Broyden's dense solves are not proven capturable on every
linear-algebra backend) that runs a fixed number of steps (``iterations``/``b_iterations``, so no host
sync) on a CUDA device, the whole forward solve and the whole adjoint solve (re-evaluation of f at z*
plus every vector-Jacobian product) are each captured once per key and replayed as one CUDA graph (see
:mod:`lmdeq.cuda_graphs`); the tracked evaluation f(z*) and the gradient into parameters stay eager.
Results equal the eager solves.

Profiler ranges (``torch.profiler.record_function``): ``lmdeq::forward_solve``, ``lmdeq::tracked_f``
and ``lmdeq::adjoint_solve`` mark the three parts of a solve (see :mod:`lmdeq.bench.profile`).

``f`` maps a state (tensor, or list/tuple of tensors, batch first) to a state of the same structure and
closes over its inputs (the injection) and parameters.
"""
from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Hashable, List, Optional, Sequence

import torch
from torch import nn
from torch.profiler import record_function

from .cuda_graphs import GraphCache
from .ops import backends
from .solvers import SolverInfo, get_solver
from .solvers.state import StateLayout

__all__ = ["deq_solve", "DEQ", "BACKWARD_MODES", "GraphedProblem", "GRAPHED_SOLVERS", "is_solved_state", "adjoint_done"]

BACKWARD_MODES = ("implicit", "jfb", "phantom", "none")
GRAPHED_SOLVERS = ("fixed_point",)
_GRAPHED = tuple(get_solver(name) for name in GRAPHED_SOLVERS)
_DONE = "_lmdeq_adjoint_done"


def is_solved_state(t: torch.Tensor) -> bool:
    """Whether ``t`` is (a part of) the solved state z* that :func:`deq_solve` passes to f for the tracked
    evaluation f(z*) of the implicit backward mode (eager solves)."""
    return hasattr(t, _DONE)


def adjoint_done(t: torch.Tensor) -> bool:
    """Whether ``t`` is a solved state (:func:`is_solved_state`) whose adjoint solve in the running
    backward pass has finished. The state is internal to deq_solve, so from then on the pass discards
    any gradient with respect to it: an operator of f whose input is z* may skip computing that gradient
    (the gradient into f's parameters through f(z*) still needs everything else)."""
    return getattr(t, _DONE, False)


def _mark_solved(parts, done: bool) -> None:
    for t in parts:
        setattr(t, _DONE, done)


@dataclass(frozen=True)
class GraphedProblem:
    """How :func:`deq_solve` may run its solves as CUDA-graph replays.

    * ``cache``: the :class:`~lmdeq.cuda_graphs.GraphCache` holding the captures (owned by the caller,
      e.g. a model, so they live as long as its parameters);
    * ``key``: everything besides ``inputs`` that f's work depends on (mode, the storage of the tensors
      it reads in place such as parameters; shapes, solver settings, the autocast state and the op
      backend are added);
    * ``inputs``: the tensors f reads that change from call to call (copied into static buffers);
    * ``bind(static_inputs)``: a context manager yielding a state -> state function that computes
      exactly f, but reads ``static_inputs`` in place of ``inputs``.
    """

    cache: GraphCache
    key: Hashable
    inputs: Sequence[torch.Tensor]
    bind: Callable[[List[torch.Tensor]], AbstractContextManager]

    def usable(self, device, solver, steps: Optional[int], solver_kwargs: Optional[dict]) -> bool:
        """A fixed-point solver (:data:`GRAPHED_SOLVERS`), a fixed step count, no trajectory, CUDA (or the
        cache's device), graphs enabled."""
        return (get_solver(solver) in _GRAPHED and steps is not None and not (solver_kwargs or {}).get("indexing")
                and self.cache.enabled(device))

    def run(self, tag: Hashable, body: Callable, state: Sequence[torch.Tensor], grad: bool):
        """``body(f, static_state) -> (parts, info)`` through the cache: returns (parts, info) where the
        info dict's tensors come from this replay and its Python values from the capture, and
        ``info.cuda_graph`` says whether this call was a graph replay."""
        inputs = list(self.inputs) + list(state)
        k = len(self.inputs)
        dev = inputs[0].device.type
        amp = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        # Same autocast state, but no cast cache: a cached cast made during warm-up would be baked into
        # the graph and go stale when the weights change (as torch.cuda.make_graphed_callables asks).
        autocast = torch.autocast(dev, dtype=amp[1], enabled=amp[0], cache_enabled=False)

        def fn(static):
            with torch.set_grad_enabled(grad), autocast, self.bind(static[:k]) as f:
                parts, info = body(f, static[k:])
            names = [n for n, v in info.items() if torch.is_tensor(v)]
            fixed = {n: v for n, v in info.items() if not torch.is_tensor(v)}
            return list(parts) + [info[n] for n in names], (len(parts), names, fixed)

        signature = tuple((tuple(t.shape), t.dtype, t.device, t.stride()) for t in inputs)
        key = (tag, self.key, amp, backends.choose(inputs[0].device), signature)
        outs, (n, names, fixed) = self.cache(key, fn, inputs)
        info = SolverInfo({**fixed, **dict(zip(names, outs[n:]))})
        info.cuda_graph = self.cache.graphed(key)  # an attribute: info's items stay tensors
        return outs[:n], info


def deq_solve(f: Callable, z0, *, solver="anderson", max_iter: int = 40, tol: float = 1e-3,
              stop_mode: str = "abs", iterations: Optional[int] = None, solver_kwargs: Optional[dict] = None,
              backward: str = "implicit", b_solver="fixed_point", b_max_iter: int = 40, b_tol: float = 1e-6,
              b_stop_mode: str = "abs", b_iterations: Optional[int] = None,
              b_solver_kwargs: Optional[dict] = None, b_x0: str = "v", phantom_steps: int = 5,
              phantom_tau: float = 0.5, on_backward: Optional[Callable[[dict], None]] = None, graph: Optional[GraphedProblem] = None):
    """Find z* = f(z*) and return ``(z, info)`` where z carries gradients per ``backward``.

    ``info`` is the forward solver's info dict (see :mod:`lmdeq.solvers`). ``on_backward(info)`` is called
    with the backward solver's info when the implicit backward runs. ``iterations``/``b_iterations`` run
    the forward/backward solves for exactly that many steps with no host sync; with ``graph`` as well
    (a fixed-point solver and a CUDA device) each such solve is one CUDA-graph replay, and
    ``info.cuda_graph`` says whether it was (False when the capture failed and the solve ran eagerly).
    ``b_x0`` is the adjoint solve's initial guess: ``'v'`` (the upstream gradient, one step ahead of 0) or
    ``'zeros'`` (as the original MDEQ's and the Lipschitz-MDEQ authors' released code start it).
    """
    if backward not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {BACKWARD_MODES}, got {backward!r}")
    if isinstance(phantom_steps, bool) or not isinstance(phantom_steps, int) or phantom_steps < 1:
        raise ValueError(f"phantom_steps must be an int >= 1, got {phantom_steps!r}")
    if not (0.0 < phantom_tau <= 1.0):
        raise ValueError(f"phantom_tau must be in (0, 1], got {phantom_tau!r}")
    if b_x0 not in ("v", "zeros"):
        raise ValueError(f"b_x0 must be 'v' or 'zeros', got {b_x0!r}")
    solve = get_solver(solver)
    b_solve = get_solver(b_solver)  # validated now, not in the middle of a backward pass
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
    if backward == "none" or not torch.is_grad_enabled():
        return layout.external(star), info

    if backward == "jfb":
        return f(layout.external(star)), info
    if backward == "phantom":
        z = star
        for _ in range(phantom_steps):
            fz = layout.check_output(f(layout.external(z)))
            z = [(1.0 - phantom_tau) * zi + phantom_tau * fi for zi, fi in zip(z, fz)]
        return layout.external(z), info

    b_kwargs = dict(max_iter=b_max_iter, tol=b_tol, stop_mode=b_stop_mode, iterations=b_iterations,
                    **(b_solver_kwargs or {}))
    if graph is not None and not graph.usable(layout.device, b_solver, b_iterations, b_solver_kwargs):
        graph = None
    adjoint = _Adjoint(layout, star, b_solve, b_kwargs, on_backward, graph,
                       (b_solver, repr(sorted(b_kwargs.items())), b_x0), _autocast_state(layout.device), b_x0)
    if graph is None:
        # The tracked evaluation, differentiable in z* too, is the one the adjoint's vector-Jacobian
        # products run on: f is evaluated once for both (its graph is kept until the backward pass).
        star = [p.requires_grad_() for p in star]
    state = layout.external(star)
    if graph is None:
        adjoint.states = [state] if torch.is_tensor(state) else list(state)
        _mark_solved(adjoint.states, False)
    with record_function("lmdeq::tracked_f"):
        tracked = layout.check_output(f(state))
    if graph is None:
        adjoint.linearisation = (star, tracked)
    out = _ImplicitGrad.apply(adjoint, *tracked)
    return layout.external(list(out)), info


def _autocast_state(device: torch.device) -> torch.autocast:
    """An autocast context equal to the one active now on ``device``'s type (entered again later)."""
    dev = device.type
    return torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), enabled=torch.is_autocast_enabled(dev))


class _Adjoint:
    """The adjoint fixed-point problem g = J_f(z*)^T g + v, solved in the backward pass on a linearisation
    (z*, f(z*)) with z* differentiable: the tracked evaluation of the forward pass (eager), or, with
    ``graph``, an evaluation inside the captured graph under the forward pass's autocast state (so f
    is the same map in both solves)."""

    def __init__(self, layout, star, solve, kwargs, on_backward, graph, tag, autocast, x0="v"):
        self.layout, self.star, self.x0 = layout, star, x0
        self.solve, self.kwargs, self.on_backward = solve, kwargs, on_backward
        self.graph, self.tag, self.autocast = graph, tag, autocast
        self.linearisation = None
        self.states = []   # the tensors f received for the tracked evaluation (eager), see adjoint_done

    def _linearise(self, f, star):
        with torch.enable_grad():
            zs = [p.detach().requires_grad_() for p in star]
            return zs, self.layout.check_output(f(self.layout.external(zs)))

    def _solve(self, zs, fz, v_parts):
        layout = self.layout

        def adjoint_map(g):
            g_parts = layout.parts(g)
            jt = torch.autograd.grad(fz, zs, g_parts, retain_graph=True, allow_unused=True)
            return layout.external([v + (j if j is not None else 0.0) for v, j in zip(v_parts, jt)])

        start = list(v_parts) if self.x0 == "v" else [torch.zeros_like(v) for v in v_parts]
        g, _, info = self.solve(adjoint_map, layout.external(start), **self.kwargs)
        return layout.parts(g), info

    def __call__(self, v_parts):
        _mark_solved(self.states, False)   # a repeated backward pass (retain_graph) needs dL/dz* again
        with record_function("lmdeq::adjoint_solve"):
            g, info = self._run(v_parts)
        _mark_solved(self.states, True)
        if self.on_backward is not None:
            self.on_backward(info)
        return g

    def _run(self, v_parts):
        if self.graph is None:
            return self._solve(*self.linearisation, v_parts)
        n = len(self.star)

        def body(f, static):
            return self._solve(*self._linearise(f, static[:n]), static[n:])

        with self.autocast:
            return self.graph.run(("adjoint",) + self.tag, body, list(self.star) + list(v_parts), grad=True)


class _ImplicitGrad(torch.autograd.Function):
    """Identity forward; backward replaces the upstream gradient v by the adjoint solution g."""

    @staticmethod
    def forward(ctx, adjoint, *parts):
        ctx.adjoint = adjoint
        return tuple(p.view_as(p) for p in parts)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        v = [g if g is not None else torch.zeros_like(s) for g, s in zip(grads, ctx.adjoint.star)]
        return (None, *ctx.adjoint(v))


class DEQ(nn.Module):
    """A deep equilibrium layer: ``DEQ(func, **config)(z0, *args)`` solves z = func(z, *args).

    ``config`` takes the keyword arguments of :func:`deq_solve` (an unknown key is an error, not a
    silently ignored setting). Returns ``(z, info)``; ``self.last_info`` keeps the latest forward info.
    """

    def __init__(self, func: Callable, **config):
        super().__init__()
        allowed = set(inspect.signature(deq_solve).parameters) - {"f", "z0"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise TypeError(f"DEQ got unknown config key(s) {unknown}; valid keys: {sorted(allowed)}")
        self.func = func
        self.config = config
        self.last_info = None

    def forward(self, z0, *args, **kwargs):
        z, info = deq_solve(lambda z: self.func(z, *args, **kwargs), z0, **self.config)
        self.last_info = info
        return z, info
