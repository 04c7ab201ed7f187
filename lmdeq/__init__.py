"""lmdeq: fast, provably convergent deep equilibrium models.

Layers (bottom up): ``lmdeq.ops`` (fused kernels behind custom ops) -> ``lmdeq.solvers``
(fixed point, Anderson, Broyden; TorchDEQ's solver contract) -> ``lmdeq.deq`` (DEQ layer with
implicit / JFB / phantom gradients) -> ``lmdeq.models`` (Lipschitz MDEQ with a certified bound).
"""
__version__ = "0.1.0"

from . import ops, solvers  # noqa: E402
from .allocator import tune_cpu_allocator  # noqa: E402
from .deq import DEQ, JFB, Implicit, Phantom, deq_solve  # noqa: E402

__all__ = ["DEQ", "deq_solve", "Implicit", "JFB", "Phantom", "ops", "solvers", "tune_cpu_allocator", "__version__"]
