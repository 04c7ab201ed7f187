"""Fixed-point solvers as values: a solver object carries its settings and solves z = f(z).

    from lmdeq.solvers import Anderson
    solution = Anderson(m=6, max_iter=30, tol=1e-3).solve(f, z0)   # Solution(value, stats)

:class:`FixedPoint`, :class:`Anderson`, :class:`Broyden` and :class:`AuthorsAnderson` (the Lipschitz-MDEQ
authors' released Anderson, baseline (b)) share the fields of :class:`Solver` (max_iter, tol, stop_mode, exact,
check_every, raise_on_failure; see :mod:`lmdeq.solvers.base`). ``max_iter=Apriori()`` is the count a certified
bound L < 1 guarantees (:meth:`Solver.with_bound`; :mod:`lmdeq.solvers.iterations` for the arithmetic,
:class:`SettledCounts` for counts resolved again and again). ``z0`` is a tensor (batch first) or a list/tuple
of tensors; residuals are per sample, abs = ||f(z) - z||, rel = abs / (||f(z)|| + 1e-9). ``Solution.stats``
(:class:`SolverInfo`) holds tensors only (:mod:`lmdeq.solvers.info`). :data:`SOLVERS` names the classes for
configs (:meth:`Solver.to_config`, :func:`solver_from_config`). TorchDEQ's function contract and names are an
adapter on top (:mod:`lmdeq.integrations.torchdeq_solvers`). :class:`StateLayout` is the structure of a state
(tensor or list) and its flat (B, n) view, for code built on the solvers.
"""
from .anderson import Anderson
from .authors_anderson import AuthorsAnderson
from .base import SOLVERS, STOP_MODES, Apriori, Solution, Solver, register_solver, solver_from_config
from .broyden import Broyden
from .fixed_point import FixedPoint
from .info import Result, SolverError, SolverInfo, result_of
from .iterations import SettledCounts, adjoint_apriori_iterations, apriori_iterations, iterations_for
from .state import StateLayout
from .tracking import Tracker

__all__ = ["Solver", "FixedPoint", "Anderson", "Broyden", "AuthorsAnderson", "Solution", "Apriori", "SOLVERS",
           "STOP_MODES", "solver_from_config", "register_solver", "iterations_for", "apriori_iterations",
           "adjoint_apriori_iterations", "SettledCounts", "Result", "SolverError", "SolverInfo", "result_of",
           "StateLayout", "Tracker"]
