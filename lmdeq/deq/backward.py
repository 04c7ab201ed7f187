"""How :func:`lmdeq.deq_solve` computes gradients: one object per method (as Optimistix's adjoints).

    Implicit(solver=FixedPoint(max_iter=40, tol=1e-6), x0='v')
                        the implicit function theorem: with z* = f(z*, theta) and v = dL/dz*,
                        dL/dtheta = g^T df/dtheta(z*) where g = J_f(z*)^T g + v, a fixed point solved by
                        ``solver`` (any :class:`~lmdeq.solvers.Solver`, configured as the forward one), started
                        at v ('v') or at 0 ('zeros', as the original MDEQ's and the Lipschitz-MDEQ authors' code
                        start it);
    JFB()               Jacobian-free backprop: dL/dtheta ~ v^T df/dtheta(z*) (one tracked f-evaluation);
    Phantom(steps=5, tau=0.5)   ``steps`` damped tracked steps z <- (1 - tau) z + tau f(z) from z*;
    None                no gradient: z* is returned detached.

The strings ``'implicit'``, ``'jfb'``, ``'phantom'`` and ``'none'`` name those methods in configs
(:func:`backward_from_config`); ``to_config()`` gives that JSON form back. Every field is checked when the object
is made (:mod:`lmdeq.checks`), not in the middle of a backward pass; ``dataclasses.replace`` checks again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Union

from .. import checks
from ..errors import ConfigTypeError
from ..solvers import FixedPoint, Solver, solver_from_config

__all__ = ["Implicit", "JFB", "Phantom", "Backward", "BACKWARD_MODES", "ADJOINT_STARTS", "as_backward",
           "backward_from_config", "backward_to_config", "DEFAULT_ADJOINT"]

BACKWARD_MODES = ("implicit", "jfb", "phantom", "none")
ADJOINT_STARTS = ("v", "zeros")
DEFAULT_ADJOINT = FixedPoint(max_iter=40, tol=1e-6)


@dataclass(frozen=True)
class Implicit:
    """The implicit gradient, its adjoint fixed point solved by ``solver`` (see the module docstring)."""

    solver: Solver = DEFAULT_ADJOINT
    x0: str = "v"

    def __post_init__(self):
        if not isinstance(self.solver, Solver):
            raise ConfigTypeError(f"Implicit: solver must be a Solver object (e.g. lmdeq.solvers.FixedPoint(max_iter=40,"
                                  f" tol=1e-6)), got {self.solver!r}")
        checks.choice("x0", self.x0, ADJOINT_STARTS, where="Implicit: ")   # the adjoint's start

    def to_config(self) -> Dict[str, Any]:
        return {"method": "implicit", "solver": self.solver.to_config(), "x0": self.x0}


@dataclass(frozen=True)
class JFB:
    """Jacobian-free backprop: the gradient of one tracked f-evaluation at z*."""

    def to_config(self) -> Dict[str, Any]:
        return {"method": "jfb"}


@dataclass(frozen=True)
class Phantom:
    """``steps`` damped tracked steps z <- (1 - tau) z + tau f(z) from z*, differentiated by autograd."""

    steps: int = 5
    tau: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "steps", checks.integer("steps", self.steps, 1, where="Phantom: "))
        object.__setattr__(self, "tau", checks.damping("tau", self.tau, where="Phantom: "))

    def to_config(self) -> Dict[str, Any]:
        return {"method": "phantom", "steps": self.steps, "tau": self.tau}


Backward = Union[Implicit, JFB, Phantom, None]
_SHORTHANDS = {"implicit": Implicit, "jfb": JFB, "phantom": Phantom}


def as_backward(spec) -> Backward:
    """The backward object ``spec`` stands for: an object as it is, None for no gradient; anything else is an
    error saying what to pass."""
    if spec is None or isinstance(spec, (Implicit, JFB, Phantom)):
        return spec
    if isinstance(spec, str) and spec in BACKWARD_MODES:
        raise ConfigTypeError(f"backward={spec!r}: pass the object, e.g. backward=lmdeq.Implicit(), lmdeq.JFB(), "
                              "lmdeq.Phantom() or None (names are for configs: lmdeq.deq.backward_from_config)")
    raise ConfigTypeError(f"backward must be Implicit(...), JFB(), Phantom(...) or None, got {spec!r}")


def backward_to_config(backward: Backward) -> Dict[str, Any]:
    """The JSON form of a backward object (``{'method': 'none'}`` for None)."""
    return {"method": "none"} if backward is None else backward.to_config()


def backward_from_config(config) -> Backward:
    """The backward object of a config dict ``{'method': 'implicit' | 'jfb' | 'phantom' | 'none', ...fields}``
    (an Implicit's ``solver`` a solver config, :func:`lmdeq.solvers.solver_from_config`); an object is returned as
    it is."""
    if config is None or isinstance(config, (Implicit, JFB, Phantom)):
        return config
    if not isinstance(config, dict):
        raise ConfigTypeError(f"a backward config must be a dict with a 'method', got {config!r}")
    fields = dict(config)
    method = checks.choice("method", fields.pop("method", None), BACKWARD_MODES, where="backward: ")
    if method == "none":
        if fields:
            raise ConfigTypeError(f"backward 'none' takes no fields, got {sorted(fields)}")
        return None
    cls = _SHORTHANDS[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigTypeError(f"backward {method!r} has no field(s) {unknown}; its fields: {sorted(known)}")
    if "solver" in fields:
        fields["solver"] = solver_from_config(fields["solver"])
    return cls(**fields)
