"""Fixed-point solvers with TorchDEQ 0.1.0's contract:

    solver(func, x0, max_iter=50, tol=1e-3, stop_mode='abs', indexing=None, **kwargs)
        -> (z_star, trajectory, info)

``x0`` is a tensor (batch first) or a list/tuple of tensors; residuals are per sample,
abs = ||f(z) - z||, rel = abs / ||f(z)||. ``info`` (:class:`SolverInfo`) holds tensors only:
TorchDEQ's keys (abs_lowest, rel_lowest, abs_trace, rel_trace, nstep, sradius) plus converged,
f_evals and an outcome code ``result`` (see :mod:`lmdeq.solvers.info`). ``max_iter=0`` returns x0
without evaluating func. :data:`TORCHDEQ_SOLVERS` holds the same solvers under TorchDEQ's four
names with TorchDEQ's exact info layout (:mod:`lmdeq.solvers.torchdeq_contract`). :class:`StateLayout` is
the structure of a state (tensor or list) and its flat (B, n) view, for code built on the solvers.
"""
from ..errors import ConfigError
from .anderson import anderson
from .authors_anderson import authors_anderson
from .broyden import broyden
from .fixed_point import fixed_point
from .info import Result, SolverError, SolverInfo, result_of
from .iterations import adjoint_apriori_iterations, apriori_iterations, iterations_for
from .state import STOP_MODES, StateLayout, UnknownOptionWarning
from .torchdeq_contract import TORCHDEQ_SOLVERS

SOLVERS = {
    "fixed_point": fixed_point,
    "anderson": anderson,
    "broyden": broyden,
    "authors_anderson": authors_anderson,  # the Lipschitz-MDEQ authors' released Anderson (baseline (b))
}
_ALIASES = {"fixed_point_iter": "fixed_point", "picard": "fixed_point"}


def get_solver(name):
    """The solver called ``name`` (a callable is returned as is)."""
    if callable(name):
        return name
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(key, str) or key not in SOLVERS:
        raise ConfigError(f"solver must be one of {sorted(SOLVERS)} (or a callable), got {name!r}")
    return SOLVERS[key]


__all__ = ["fixed_point", "anderson", "broyden", "iterations_for", "apriori_iterations", "adjoint_apriori_iterations",
           "get_solver", "SOLVERS", "TORCHDEQ_SOLVERS",
           "Result", "SolverError", "SolverInfo", "result_of", "UnknownOptionWarning", "StateLayout", "STOP_MODES"]
