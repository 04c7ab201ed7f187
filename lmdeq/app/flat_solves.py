"""The flat spelling of a model's solves on the command line: ``--set f_max_iter=7 --set b_solver=anderson``.

A model config holds its solves as two sections, ``forward`` (a solver) and ``backward`` (a backward method)
(:mod:`lmdeq.models.solves`). ``--set`` takes them whole (``--set 'forward={"name": "anderson", "max_iter": 30}'``)
or, one setting at a time, in TorchDEQ's flat names, which this module — the only place that knows them — turns
into edits of the sections:

    f_solver / b_solver          the solver by name (its own fields back to their defaults; the shared ones kept)
    f_max_iter / b_max_iter      an int, or none / null: the certified a-priori count (``Apriori()``)
    f_tol, f_stop_mode, f_exact  (and b_...) the solver's field of that name
    f_solver_kwargs / b_solver_kwargs   a dict of the solver's own fields, e.g. {"m": 5, "check_every": 2}
    backward                     the backward method: implicit, jfb, phantom or none
    b_x0                         the implicit adjoint's start: v or zeros
    solve_mode                   apriori (both solves run exactly their certified count: exact, Apriori) or checked
                                 (both solves check convergence)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from .. import checks
from ..deq import BACKWARD_MODES, Implicit, backward_from_config, backward_to_config
from ..errors import ConfigError, ConfigTypeError
from ..models import resolve_config
from ..solvers import SOLVERS, Apriori, Solver, solver_from_config

__all__ = ["FLAT_KEYS", "split_flat", "apply_flat", "model_arguments"]

_FIELDS = ("max_iter", "tol", "stop_mode", "exact")
FLAT_KEYS = tuple(f"{side}_{name}" for side in "fb" for name in ("solver", *_FIELDS, "solver_kwargs")) + (
    "backward", "b_x0", "solve_mode")
_SHARED = tuple(f.name for f in dataclasses.fields(Solver))   # the fields every solver has


def split_flat(overrides: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the flat solve keys of ``overrides``, the rest); ``backward`` is flat when it is a method's name (an
    object or a section dict is the whole backward)."""
    flat = {k: v for k, v in overrides.items() if k in FLAT_KEYS and (k != "backward" or isinstance(v, str))}
    return flat, {k: v for k, v in overrides.items() if k not in flat}


def _edit(solver: Solver, side: str, flat: Dict[str, Any]) -> Solver:
    name = flat.get(f"{side}_solver")
    if name is not None:
        if name not in SOLVERS:
            raise ConfigError(f"{side}_solver must be one of {sorted(SOLVERS)}, got {name!r}")
        shared = {k: getattr(solver, k) for k in _SHARED}
        solver = SOLVERS[name](**shared)
    changes = {}
    for field in _FIELDS:
        key = f"{side}_{field}"
        if key in flat:
            value = flat[key]
            if field == "max_iter" and isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ConfigError(f"{key} must be >= 1 (a model's state starts at 0: its solves need a step), or "
                                  f"none for the certified a-priori count, got {value}")
            changes[field] = Apriori() if field == "max_iter" and value is None else value
    options = flat.get(f"{side}_solver_kwargs")
    if options is not None:
        if not isinstance(options, dict):
            raise ConfigTypeError(f"{side}_solver_kwargs must be a dict of the solver's fields, got {options!r}")
        known = {f.name for f in dataclasses.fields(solver)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigTypeError(f"{side}_solver_kwargs: {type(solver).__name__} has no field(s) {unknown}; its "
                                  f"fields: {sorted(known)}")
        changes.update(options)
    return solver.replace(**changes) if changes else solver


def apply_flat(forward, backward, flat: Dict[str, Any]):
    """(forward, backward) objects after the flat edits ``flat`` (module docstring), from the sections or objects
    ``forward`` and ``backward``."""
    forward, backward = solver_from_config(forward), backward_from_config(backward)
    mode = flat.get("solve_mode")
    if mode is not None and mode not in ("apriori", "checked"):
        raise ConfigError(f"solve_mode must be 'apriori' or 'checked', got {mode!r}")
    forward = _edit(forward, "f", flat)
    if "backward" in flat:   # another method: its defaults; the same method: kept as it is
        method = checks.choice("backward", flat["backward"], BACKWARD_MODES)
        if backward_to_config(backward)["method"] != method:
            backward = backward_from_config({"method": method})
    b_keys = [k for k in flat if k.startswith("b_")]
    if b_keys and not isinstance(backward, Implicit):
        raise ConfigError(f"{sorted(b_keys)} set the implicit backward's adjoint solve, but the backward method is "
                          f"{'none' if backward is None else type(backward).__name__}")
    if isinstance(backward, Implicit):
        adjoint = _edit(backward.solver, "b", flat)
        backward = Implicit(solver=adjoint, x0=flat.get("b_x0", backward.x0))
    if mode is not None:
        exact = mode == "apriori"
        fields = dict(exact=exact, **({"max_iter": Apriori()} if exact else {}))
        forward = forward.replace(**fields)
        if isinstance(backward, Implicit):
            backward = Implicit(solver=backward.solver.replace(**fields), x0=backward.x0)
    return forward, backward


def model_arguments(preset: str, lipschitz: bool, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`lmdeq.models.mdeq`'s keyword arguments for ``--preset``/``--set``: the flat solve keys applied to the
    sections the other overrides give (those of the preset and variant unless ``forward``/``backward`` are set)."""
    flat, rest = split_flat(overrides)
    if not flat:
        return dict(rest)
    base = resolve_config(preset, lipschitz, **{k: v for k, v in rest.items() if k in ("forward", "backward")})
    forward, backward = apply_flat(base["forward"], base["backward"], flat)
    return {**rest, "forward": forward, "backward": backward}
