"""Deprecated: the a-priori iteration counts moved to :mod:`lmdeq.solvers.iterations` (next to
``iterations_for``, the Banach arithmetic they are built on); import them from ``lmdeq.solvers``."""
from ..deprecation import deprecated
from ..solvers.iterations import adjoint_apriori_iterations, apriori_iterations

__all__ = ["apriori_iterations", "adjoint_apriori_iterations"]

deprecated("lmdeq.models.apriori is deprecated: import apriori_iterations and adjoint_apriori_iterations from "
           "lmdeq.solvers")
