"""The flat spelling of :func:`~lmdeq.deq_solve`'s arguments, for configs that must be flat and JSON (a model
config, ``lmdeq train --set key=value``, a checkpoint): one naming rule instead of a translation table.

    f_<name>  the forward solve's <name>:          f_solver f_max_iter f_tol f_stop_mode f_iterations f_solver_kwargs
    backward  the backward method's shorthand:     'implicit', 'jfb', 'phantom' or 'none'
    b_<name>  the implicit backward's <name>:      b_solver b_max_iter b_tol b_stop_mode b_iterations b_solver_kwargs
              (the fields of Implicit)             b_x0

so ``f_max_iter`` is deq_solve's ``max_iter`` and ``b_tol`` is ``Implicit.tol``; the forward and backward names
are TorchDEQ's (``f_solver``, ``b_max_iter``, ...). :func:`solve_arguments` turns such a config into deq_solve's
keyword arguments; keys it does not know are left to the caller (a model's own settings).
"""
from __future__ import annotations

import copy
from dataclasses import fields
from typing import Mapping

from .backward import Implicit, as_backward

__all__ = ["FORWARD_FIELDS", "BACKWARD_FIELDS", "forward_key", "backward_key", "solve_arguments"]

FORWARD_FIELDS = ("solver", "max_iter", "tol", "stop_mode", "iterations", "solver_kwargs")
BACKWARD_FIELDS = tuple(f.name for f in fields(Implicit))


def forward_key(name: str) -> str:
    """The flat key of the forward solve's argument ``name`` ('max_iter' -> 'f_max_iter')."""
    return "f_" + name


def backward_key(name: str) -> str:
    """The flat key of the implicit backward's field ``name`` ('x0' -> 'b_x0')."""
    return "b_" + name


def solve_arguments(config: Mapping) -> dict:
    """deq_solve's keyword arguments from a flat config: the forward solve's (those given), and ``backward``:
    ``Implicit`` of the ``b_`` keys given when ``config['backward']`` is 'implicit' (the default), else the
    shorthand's object. Values are copied (deq_solve never sees the config's own dicts)."""
    kwargs = {name: copy.deepcopy(config[forward_key(name)]) for name in FORWARD_FIELDS
              if forward_key(name) in config}
    kind = config.get("backward", "implicit")
    if kind == "implicit":
        kwargs["backward"] = Implicit(**{name: copy.deepcopy(config[backward_key(name)]) for name in BACKWARD_FIELDS
                                         if backward_key(name) in config})
    else:
        kwargs["backward"] = as_backward(kind)
    return kwargs
