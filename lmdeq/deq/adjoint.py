"""The implicit gradient (:class:`~lmdeq.deq.backward.Implicit`) as an ``autograd.Function``.

With z* = f(z*, theta) and upstream gradient v = dL/dz*,

    dL/dtheta = g^T df/dtheta(z*),   where   g = J_f(z*)^T g + v

is itself a fixed point, solved with any solver. :class:`ImplicitGrad` is an identity in the forward pass whose
backward returns g; it is applied to the tracked evaluation f(z*), and autograd then carries g into f's
parameters and inputs. That evaluation is differentiable in z* as well, and the adjoint's vector-Jacobian
products J_f^T g run on its graph, so f is evaluated with autograd once per step. No tensor hooks, so it is
safe under DistributedDataParallel and re-entrant backward.

The state f receives for that evaluation is marked (:func:`is_solved_state`) and flagged once the adjoint solve
is done (:func:`adjoint_done`): the rest of the backward pass only needs the gradient into f's parameters and
inputs, so an operator of f may skip the gradient with respect to z* (the MDEQ's convolutions on z* do).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import is_legacy_batchedtensor, maybe_current_level
from torch.profiler import record_function

from ..errors import UnsupportedError
from ..solvers import StateLayout
from .backward import Implicit
from .graphed import GraphedProblem
from .jacobian import JacobianPair

__all__ = ["implicit_gradient", "is_solved_state", "adjoint_done", "HIGHER_ORDER", "BATCHED_BACKWARD", "FORWARD_AD",
           "forward_mode_active", "refuse_tangents"]

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


def _autocast_state(device: torch.device) -> torch.autocast:
    """An autocast context equal to the one active now on ``device``'s type (entered again later)."""
    dev = device.type
    return torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), enabled=torch.is_autocast_enabled(dev))


def implicit_gradient(f: Callable, layout: StateLayout, star: List[torch.Tensor], backward: Implicit,
                      on_backward: Optional[Callable[[dict], None]], graph: Optional[GraphedProblem],
                      keep_pair: bool = False):
    """z* (the detached parts ``star``) carrying the implicit gradient: the tracked f(z*) through
    :class:`ImplicitGrad`, in the user's structure. ``on_backward(info)`` receives the adjoint solve's info.
    ``keep_pair``: return ``(z, pair)`` with pair = :class:`~lmdeq.deq.jacobian.JacobianPair` (f(z*) as f
    returned it, the state f received) of the tracked evaluation, which is differentiable in z* when the
    adjoint runs eagerly; None when the adjoint is graphed (its linearisation is then made inside the graph)."""
    if graph is not None and not graph.usable(layout.device, backward.solver):
        graph = None
    adjoint = _Adjoint(layout, star, backward.solver, on_backward, graph, (repr(backward.solver), backward.x0),
                       _autocast_state(layout.device), backward.x0)
    if graph is None:
        # The tracked evaluation, differentiable in z* too, is the one the adjoint's vector-Jacobian
        # products run on: f is evaluated once for both (its graph is kept until the backward pass).
        star = [p.requires_grad_() for p in star]
    state = layout.external(star)
    if graph is None:
        adjoint.states = [state] if torch.is_tensor(state) else list(state)
        _mark_solved(adjoint.states, False)
    with record_function("lmdeq::tracked_f"):
        fz = f(state)
        tracked = layout.check_output(fz)
    refuse_tangents(tracked)
    if graph is None:
        adjoint.linearisation = (star, tracked)
        if not _reaches_another_leaf(tracked, star):
            # Nothing f reads besides z* requires grad: there is no gradient to compute, and z* must not claim one
            # (a result that requires grad for nothing cannot even be turned into numpy).
            out = layout.external([p.detach() for p in star])
            return (out, JacobianPair(fz, state)) if keep_pair else out
    out = layout.external(list(ImplicitGrad.apply(adjoint, *tracked)))
    if not keep_pair:
        return out
    return out, (JacobianPair(fz, state) if graph is None else None)


def _reaches_another_leaf(outputs, star) -> bool:
    """Whether autograd can reach, from ``outputs``, a leaf that requires grad other than the parts of ``star``
    (a parameter of f, an input): a walk up the graph of one f-evaluation that stops at the first such leaf."""
    own = {id(t) for t in star}
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)   # AccumulateGrad: a leaf that requires grad
        if variable is not None:
            if id(variable) not in own:
                return True
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return False


class _Adjoint:
    """The adjoint fixed-point problem g = J_f(z*)^T g + v, solved in the backward pass on a linearisation
    (z*, f(z*)) with z* differentiable: the tracked evaluation of the forward pass (eager), or, with
    ``graph``, an evaluation inside the captured graph under the forward pass's autocast state (so f
    is the same map in both solves)."""

    def __init__(self, layout, star, solver, on_backward, graph, tag, autocast, x0="v"):
        self.layout, self.star, self.x0 = layout, star, x0
        self.solver, self.on_backward = solver, on_backward
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
        sol = self.solver.solve(adjoint_map, layout.external(start))
        return layout.parts(sol.value), sol.stats

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


HIGHER_ORDER = ("deq_solve: a gradient of the implicit gradient (create_graph=True through the DEQ's backward: a "
                "gradient penalty, a double backward, a Hessian-vector product) is not supported: the adjoint g solves "
                "g = J^T g + v without a graph, so its derivative would be silently wrong. Use backward=JFB() or "
                "Phantom(...) (plain autograd through f at z*, differentiable any number of times), or differentiate "
                "an unrolled solve. Jacobian regularisation does not need it: take info.jacobian_pair "
                "(deq_solve(..., jacobian_pair=True)) and lmdeq.jac_reg, which differentiate f at z*, not the solve.")


BATCHED_BACKWARD = ("deq_solve: a batched backward pass through the implicit gradient (torch.autograd.grad(..., "
                    "is_grads_batched=True), torch.autograd.functional.jacobian / hessian with vectorize=True, a vmap "
                    "over a gradient) is not supported: the adjoint solve runs data-dependent loops that vmap cannot "
                    "batch. Use vectorize=False (one backward pass per row), or backward=JFB() / Phantom(...) (plain "
                    "autograd through f at z*).")
FORWARD_AD = ("deq_solve: forward-mode AD (torch.autograd.forward_ad dual tensors) through the implicit gradient, or "
              "through a solve under torch.no_grad(), is not supported: the solution's tangent would be silently "
              "dropped. Use backward=JFB() or Phantom(...) with grad enabled (the tangent of their approximation), or "
              "reverse mode (torch.autograd.grad / .backward()).")


def forward_mode_active() -> bool:
    """Whether a forward-mode AD level (``torch.autograd.forward_ad.dual_level()``) is open."""
    return fwAD._current_level >= 0


def refuse_tangents(parts) -> None:
    """UnsupportedError (:data:`FORWARD_AD`) when a forward-mode AD level is open and one of ``parts`` (an evaluation of
    f) carries a tangent, which the solution could not pass on."""
    if forward_mode_active() and any(fwAD.unpack_dual(p).tangent is not None for p in parts):
        raise UnsupportedError(FORWARD_AD)


class ImplicitGrad(torch.autograd.Function):
    """Identity forward; backward replaces the upstream gradient v by the adjoint solution g. Differentiable
    once: a backward pass that builds a graph (create_graph=True) is refused (:data:`HIGHER_ORDER`), and so is a
    batched one (:data:`BATCHED_BACKWARD`)."""

    @staticmethod
    def forward(ctx, adjoint, *parts):
        ctx.adjoint = adjoint
        return tuple(p.view_as(p) for p in parts)

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():   # the engine runs backward functions in grad mode iff create_graph=True
            raise UnsupportedError(HIGHER_ORDER)
        # a vmap over the backward pass: is_grads_batched / vectorize=True batch the gradients (legacy batching)
        if maybe_current_level() is not None or any(g is not None and is_legacy_batchedtensor(g) for g in grads):
            raise UnsupportedError(BATCHED_BACKWARD)
        v = [g if g is not None else torch.zeros_like(s) for g, s in zip(grads, ctx.adjoint.star)]
        return (None, *ctx.adjoint(v))
