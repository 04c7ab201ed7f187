"""A solve is a value: a solver object carries every setting of a fixed-point solve z = f(z).

    solver = Anderson(m=6, lam=1e-4, max_iter=30, tol=1e-3, stop_mode="rel")
    solution = solver.solve(f, z0)        # Solution(value, stats); solution.result reads the outcome

Every solver (:class:`FixedPoint`, :class:`Anderson`, :class:`Broyden`, :class:`AuthorsAnderson`) is a frozen
dataclass with keyword-only fields, validated when it is made (a bad value is an error naming the field, an
unknown field a TypeError), so a solver can be built once, compared, hashed, printed, stored in a config
(:meth:`Solver.to_config`, :func:`solver_from_config`) and reused for any number of solves. The fields every
solver has:

    max_iter      the step budget: an int >= 0, or :class:`Apriori` (the count that a certified Lipschitz bound L
                  guarantees, resolved by :meth:`Solver.with_bound` before solving)
    tol           the residual target (> 0)
    stop_mode     'abs': ||f(z) - z|| per sample; 'rel': abs / (||f(z)|| + REL_EPS)
    exact         run exactly ``max_iter`` steps with no convergence checks and no host sync, and return the
                  last iterate (a certified count makes a check redundant; a CUDA graph cannot sync);
                  AuthorsAnderson returns its lowest-residual iterate even then, as released
    check_every   read the convergence flag back every this many steps (default: 1 on CPU, 4 on a GPU)
    raise_on_failure   raise :class:`~lmdeq.solvers.SolverError` unless every sample converged

``solve`` returns a :class:`Solution`: ``value`` (z* in the structure of z0: a tensor, or a list/tuple of
tensors, batch first) and ``stats`` (a :class:`~lmdeq.solvers.SolverInfo`: lowest residuals, traces, nstep,
converged, f_evals, result; all tensors, nothing read back). :meth:`Solver.run` is the same solve with the
estimates at chosen steps (``snapshots``) and a pluggable bookkeeper (``tracker``), for adapters such as the
TorchDEQ one (:mod:`lmdeq.integrations`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Sequence, Union

from .. import checks
from ..errors import ConfigError, ConfigTypeError
from .info import Result, SolverInfo
from .iterations import adjoint_apriori_iterations, apriori_iterations
from .tracking import Tracker

__all__ = ["Solver", "Solution", "Apriori", "STOP_MODES", "SOLVERS", "solver_from_config", "register_solver"]

STOP_MODES = ("abs", "rel")


@dataclass(frozen=True)
class Apriori:
    """``max_iter=Apriori()``: the step count that Banach's theorem guarantees for a certified bound L < 1
    (:func:`~lmdeq.solvers.apriori_iterations`, or :func:`~lmdeq.solvers.adjoint_apriori_iterations` for an
    adjoint solve started at v), resolved by :meth:`Solver.with_bound`. ``slack``: a caller that resolves it
    repeatedly (a model whose L drifts while training) keeps a count until the need has fallen by ``slack``
    steps (:class:`~lmdeq.solvers.SettledCounts`), so a change of count, a CUDA-graph recapture, stays rare."""

    slack: int = 2

    def __post_init__(self):
        object.__setattr__(self, "slack", checks.integer("slack", self.slack, 1, where="Apriori: "))


@dataclass(frozen=True)
class Solution:
    """What :meth:`Solver.solve` returns: ``value`` (z*, in z0's structure) and ``stats`` (its info)."""

    value: Any
    stats: SolverInfo

    @property
    def result(self) -> Result:
        """The outcome (reads the device: a sync)."""
        return self.stats.result


@dataclass(frozen=True, kw_only=True)
class Solver:
    """The settings every solver shares (module docstring); subclasses add their own and implement ``_run``."""

    name: ClassVar[str] = "solver"
    max_iter: Union[int, Apriori] = 40
    tol: float = 1e-3
    stop_mode: str = "abs"
    exact: bool = False
    check_every: Optional[int] = None
    raise_on_failure: bool = False

    def __post_init__(self):
        where = f"{type(self).__name__}: "
        set_ = object.__setattr__
        if not isinstance(self.max_iter, Apriori):
            set_(self, "max_iter", checks.count("max_iter", self.max_iter, where=where))
        set_(self, "tol", checks.number("tol", self.tol, 0, low_open=True, where=where))
        checks.choice("stop_mode", self.stop_mode, STOP_MODES, where=where)
        set_(self, "exact", checks.boolean("exact", self.exact, where=where))
        if self.check_every is not None:
            set_(self, "check_every", checks.integer("check_every", self.check_every, 1, where=where))
        set_(self, "raise_on_failure", checks.boolean("raise_on_failure", self.raise_on_failure, where=where))
        self._check(where)

    def _check(self, where: str) -> None:
        """Validate the solver's own fields (subclasses)."""

    # -- values ---------------------------------------------------------------------------------------------
    def replace(self, **changes) -> "Solver":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def damping(self) -> float:
        """The damping tau of the solver's fixed-point steps (1.0 for solvers without one)."""
        return getattr(self, "tau", 1.0)

    @property
    def needs_bound(self) -> bool:
        """Whether ``max_iter`` is an :class:`Apriori` count still to be resolved against a bound."""
        return isinstance(self.max_iter, Apriori)

    def with_bound(self, lipschitz: float, adjoint: bool = False) -> "Solver":
        """This solver with an :class:`Apriori` ``max_iter`` replaced by the count that guarantees a relative
        residual <= tol for an L-contraction (forward from z0 = 0; ``adjoint``: g = J^T g + v from g0 = v); a
        solver with an int max_iter is returned as it is."""
        if not self.needs_bound:
            return self
        count = (adjoint_apriori_iterations if adjoint else apriori_iterations)(lipschitz, self.tol, self.damping)
        return self.replace(max_iter=count)

    def to_config(self) -> Dict[str, Any]:
        """The solver as a JSON-able dict (``{'name': ..., field: value, ...}``; an Apriori max_iter is
        ``{'apriori': slack}``), which :func:`solver_from_config` turns back into an equal solver."""
        out: Dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = {"apriori": value.slack} if isinstance(value, Apriori) else value
        return out

    # -- solving --------------------------------------------------------------------------------------------
    def budget(self) -> int:
        """The step budget (an error while max_iter is an unresolved :class:`Apriori`)."""
        if isinstance(self.max_iter, Apriori):
            raise ConfigError(f"{type(self).__name__}: max_iter=Apriori() must be resolved against a certified bound "
                              "first (solver.with_bound(L)); a model with a certified bound does this itself")
        return self.max_iter

    def solve(self, f, z0) -> Solution:
        """Solve z = f(z) from z0; see the module docstring."""
        value, _, stats = self.run(f, z0)
        return Solution(value, stats)

    def run(self, f, z0, snapshots: Optional[Sequence[int]] = None, tracker=Tracker):
        """(value, estimates at the 1-based steps ``snapshots``, stats): the solve of :meth:`solve` with the best
        estimate recorded at those steps (steps after an early stop get the final estimate; step 0 is z0, except for
        AuthorsAnderson, whose steps are f-evaluation counts from 1) and
        ``tracker``, the class that keeps the residuals and decides when to stop (:class:`Tracker`; an adapter
        may pass a subclass with another bookkeeping)."""
        return self._run(f, z0, self.budget(), snapshots, tracker)

    def _run(self, f, z0, steps: int, snapshots, tracker):
        raise NotImplementedError


SOLVERS: Dict[str, type] = {}


def register_solver(cls: type) -> type:
    """Class decorator: ``cls.name`` becomes a name configs may use (:func:`solver_from_config`)."""
    SOLVERS[cls.name] = cls
    return cls


def solver_from_config(config: Union[Dict[str, Any], Solver]) -> Solver:
    """The solver a :meth:`Solver.to_config` dict describes (a solver is returned as it is). ``name`` picks
    the class from :data:`SOLVERS`; every other key is a field (an unknown one is an error naming it)."""
    if isinstance(config, Solver):
        return config
    if not isinstance(config, dict):
        raise ConfigTypeError(f"a solver config must be a dict with a 'name' (or a Solver), got {config!r}")
    fields = dict(config)
    name = fields.pop("name", None)
    if name not in SOLVERS:
        raise ConfigError(f"solver name must be one of {sorted(SOLVERS)}, got {name!r}")
    cls = SOLVERS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigTypeError(f"{cls.__name__} has no field(s) {unknown}; its fields: {sorted(known)}")
    max_iter = fields.get("max_iter")
    if isinstance(max_iter, dict):
        if set(max_iter) != {"apriori"}:
            raise ConfigTypeError(f"{cls.__name__}: max_iter must be an int or {{'apriori': slack}}, got {max_iter!r}")
        fields["max_iter"] = Apriori(slack=max_iter["apriori"])
    return cls(**fields)
