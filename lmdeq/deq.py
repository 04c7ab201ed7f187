"""The DEQ layer: solve z* = f(z*) without building a graph, then attach gradients.

Backward modes (``backward=``):

* ``'implicit'`` — implicit function theorem. With z* = f(z*, theta) and upstream gradient v = dL/dz*,

      dL/dtheta = g^T df/dtheta(z*),   where   g = J_f(z*)^T g + v

  is itself a fixed point, solved with any solver (``b_solver``, own ``b_max_iter``/``b_tol``). It is an
  ``autograd.Function`` (an identity in the forward pass whose backward returns g), applied to the
  tracked re-evaluation f(z*); autograd then carries g into f's parameters and inputs. No tensor hooks,
  so it is safe under DistributedDataParallel and re-entrant backward.
* ``'jfb'`` — Jacobian-free backprop: dL/dtheta ~ v^T df/dtheta(z*) (one tracked f-evaluation).
* ``'phantom'`` — ``phantom_steps`` damped tracked steps z <- (1 - phantom_tau) z + phantom_tau f(z) from z*.
* ``'none'`` — return z* detached.

``f`` maps a state (tensor, or list/tuple of tensors, batch first) to a state of the same structure and
closes over its inputs (the injection) and parameters.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
from torch import nn

from .solvers import get_solver
from .solvers.state import StateLayout

__all__ = ["deq_solve", "DEQ", "BACKWARD_MODES"]

BACKWARD_MODES = ("implicit", "jfb", "phantom", "none")


def deq_solve(f: Callable, z0, *, solver="anderson", max_iter: int = 40, tol: float = 1e-3,
              stop_mode: str = "abs", iterations: Optional[int] = None, solver_kwargs: Optional[dict] = None,
              backward: str = "implicit", b_solver="fixed_point", b_max_iter: int = 40, b_tol: float = 1e-6,
              b_stop_mode: str = "abs", b_iterations: Optional[int] = None,
              b_solver_kwargs: Optional[dict] = None, phantom_steps: int = 5, phantom_tau: float = 0.5,
              on_backward: Optional[Callable[[dict], None]] = None):
    """Find z* = f(z*) and return ``(z, info)`` where z carries gradients per ``backward``.

    ``info`` is the forward solver's info dict (see :mod:`lmdeq.solvers`). ``on_backward(info)`` is called
    with the backward solver's info when the implicit backward runs. ``iterations``/``b_iterations`` run
    the forward/backward solves for exactly that many steps with no host sync.
    """
    if backward not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {BACKWARD_MODES}, got {backward!r}")
    if isinstance(phantom_steps, bool) or not isinstance(phantom_steps, int) or phantom_steps < 1:
        raise ValueError(f"phantom_steps must be an int >= 1, got {phantom_steps!r}")
    if not (0.0 < phantom_tau <= 1.0):
        raise ValueError(f"phantom_tau must be in (0, 1], got {phantom_tau!r}")
    solve = get_solver(solver)
    b_solve = get_solver(b_solver)  # validated now, not in the middle of a backward pass
    layout = StateLayout(z0, "z0")
    z0 = layout.external([p.detach() for p in layout.parts(z0)])
    with torch.no_grad():
        z_star, _, info = solve(f, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                                iterations=iterations, **(solver_kwargs or {}))
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

    tracked = layout.check_output(f(layout.external(star)))
    adjoint = _Adjoint(f, layout, star, b_solve,
                       dict(max_iter=b_max_iter, tol=b_tol, stop_mode=b_stop_mode, iterations=b_iterations,
                            **(b_solver_kwargs or {})),
                       on_backward)
    out = _ImplicitGrad.apply(adjoint, *tracked)
    return layout.external(list(out)), info


class _Adjoint:
    """The adjoint fixed-point problem g = J_f(z*)^T g + v, built lazily in the backward pass (the
    re-evaluation of f at z* happens only if a backward pass runs)."""

    def __init__(self, f, layout, star, solve, kwargs, on_backward):
        self.f, self.layout, self.star = f, layout, star
        self.solve, self.kwargs, self.on_backward = solve, kwargs, on_backward

    def __call__(self, v_parts):
        layout = self.layout
        with torch.enable_grad():
            zs = [p.detach().requires_grad_() for p in self.star]
            fz = layout.check_output(self.f(layout.external(zs)))

        def adjoint_map(g):
            g_parts = layout.parts(g)
            jt = torch.autograd.grad(fz, zs, g_parts, retain_graph=True, allow_unused=True)
            return layout.external([v + (j if j is not None else 0.0) for v, j in zip(v_parts, jt)])

        g, _, info = self.solve(adjoint_map, layout.external(list(v_parts)), **self.kwargs)
        if self.on_backward is not None:
            self.on_backward(info)
        return layout.parts(g)


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
