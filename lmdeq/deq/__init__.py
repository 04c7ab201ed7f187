"""Deep equilibrium layers: solve z* = f(z*) without building a graph, then attach gradients.

* :func:`deq_solve` / :class:`DEQ` (:mod:`lmdeq.deq.solve`): the forward solve and the gradient method;
* the gradient methods (:mod:`lmdeq.deq.backward`): ``Implicit(...)``, ``JFB()``, ``Phantom(...)``, None, and
  their config form (``backward_from_config`` / ``backward_to_config``);
* the implicit gradient as an autograd Function, and the solved-state marks ``is_solved_state`` /
  ``adjoint_done`` (:mod:`lmdeq.deq.adjoint`);
* CUDA-graph replay of fixed-count solves, :class:`GraphedProblem` (:mod:`lmdeq.deq.graphed`);
* Jacobian regularisation and the power method on a pair (f(z*), z*): ``jac_reg``, ``power_method``,
  ``jacobian_pair``, ``JacobianPair``, and ``jacobian_norm(f, z)`` (||J_f(z)||_2 by power iteration) (:mod:`lmdeq.deq.jacobian`; ``deq_solve(..., jacobian_pair=True)``).
"""
from .adjoint import adjoint_done, is_solved_state
from .backward import BACKWARD_MODES, JFB, Implicit, Phantom, as_backward, backward_from_config, backward_to_config
from .graphed import GRAPHED_SOLVERS, GraphedProblem
from .jacobian import JacobianPair, jac_reg, jacobian_norm, jacobian_pair, power_method
from .solve import DEQ, deq_solve

__all__ = ["deq_solve", "DEQ", "Implicit", "JFB", "Phantom", "as_backward", "backward_from_config",
           "backward_to_config", "BACKWARD_MODES", "GraphedProblem",
           "GRAPHED_SOLVERS", "is_solved_state", "adjoint_done", "jac_reg", "power_method", "jacobian_pair", "jacobian_norm",
           "JacobianPair"]
