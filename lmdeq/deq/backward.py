"""How :func:`lmdeq.deq_solve` computes gradients: one object per method (as Optimistix's adjoints).

    Implicit(solver='fixed_point', max_iter=40, tol=1e-6, stop_mode='abs', iterations=None, solver_kwargs=None,
             x0='v')    the implicit function theorem: with z* = f(z*, theta) and v = dL/dz*,
                        dL/dtheta = g^T df/dtheta(z*) where g = J_f(z*)^T g + v, a fixed point solved with
                        ``solver`` (the forward solve's arguments, for the adjoint), started at v ('v') or at 0
                        ('zeros', as the original MDEQ's and the Lipschitz-MDEQ authors' code start it);
    JFB()               Jacobian-free backprop: dL/dtheta ~ v^T df/dtheta(z*) (one tracked f-evaluation);
    Phantom(steps=5, tau=0.5)   ``steps`` damped tracked steps z <- (1 - tau) z + tau f(z) from z*;
    None                no gradient: z* is returned detached.

The strings ``'implicit'``, ``'jfb'``, ``'phantom'`` and ``'none'`` stand for those objects with their defaults.
Every field is checked when the object is made (:mod:`lmdeq.checks`), not in the middle of a backward pass;
``dataclasses.replace(backward, max_iter=...)`` checks again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

from .. import checks
from ..errors import ConfigTypeError
from ..solvers import STOP_MODES, get_solver

__all__ = ["Implicit", "JFB", "Phantom", "Backward", "BACKWARD_MODES", "ADJOINT_STARTS", "as_backward"]

BACKWARD_MODES = ("implicit", "jfb", "phantom", "none")
ADJOINT_STARTS = ("v", "zeros")


@dataclass(frozen=True)
class Implicit:
    """The implicit gradient, its adjoint fixed point solved by ``solver`` (see the module docstring)."""

    solver: Union[str, Callable] = "fixed_point"
    max_iter: int = 40
    tol: float = 1e-6
    stop_mode: str = "abs"
    iterations: Optional[int] = None
    solver_kwargs: Optional[dict] = None
    x0: str = "v"

    def __post_init__(self):
        get_solver(self.solver)
        set_ = object.__setattr__
        set_(self, "max_iter", checks.count("max_iter", self.max_iter, where="Implicit: "))
        set_(self, "tol", checks.number("tol", self.tol, 0, low_open=True, where="Implicit: "))
        checks.choice("stop_mode", self.stop_mode, STOP_MODES, where="Implicit: ")
        if self.iterations is not None:
            set_(self, "iterations", checks.count("iterations", self.iterations, where="Implicit: "))
        if self.solver_kwargs is not None and not isinstance(self.solver_kwargs, dict):
            raise ConfigTypeError(f"Implicit: solver_kwargs must be a dict, got {type(self.solver_kwargs).__name__}")
        set_(self, "solver_kwargs", dict(self.solver_kwargs or {}))
        checks.choice("x0", self.x0, ADJOINT_STARTS, where="Implicit: ")   # the adjoint's start

    def solver_arguments(self) -> dict:
        """The keyword arguments of the adjoint's solver call."""
        return dict(max_iter=self.max_iter, tol=self.tol, stop_mode=self.stop_mode, iterations=self.iterations,
                    **self.solver_kwargs)


@dataclass(frozen=True)
class JFB:
    """Jacobian-free backprop: the gradient of one tracked f-evaluation at z*."""


@dataclass(frozen=True)
class Phantom:
    """``steps`` damped tracked steps z <- (1 - tau) z + tau f(z) from z*, differentiated by autograd."""

    steps: int = 5
    tau: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "steps", checks.integer("steps", self.steps, 1, where="Phantom: "))
        object.__setattr__(self, "tau", checks.damping("tau", self.tau, where="Phantom: "))


Backward = Union[Implicit, JFB, Phantom, None]
_SHORTHANDS = {"implicit": Implicit, "jfb": JFB, "phantom": Phantom}


def as_backward(spec) -> Backward:
    """The backward object ``spec`` stands for: an object as it is, a shorthand string with its defaults,
    ``'none'`` or None for no gradient."""
    if spec is None or isinstance(spec, (Implicit, JFB, Phantom)):
        return spec
    if isinstance(spec, str):
        checks.choice("backward", spec, BACKWARD_MODES)
        return None if spec == "none" else _SHORTHANDS[spec]()
    raise ConfigTypeError(f"backward must be one of {BACKWARD_MODES}, Implicit(...), JFB(), Phantom(...) or None, "
                          f"got {spec!r}")
