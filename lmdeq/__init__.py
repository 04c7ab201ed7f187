"""lmdeq: fast, provably convergent deep equilibrium models.

Layers (bottom up; the whole map is in the README's Layout section and tests/test_layers.py): shared facts
(``lmdeq.numerics``, ``lmdeq.checks``, ``lmdeq.errors``) -> ``lmdeq.kernels`` (Triton) and ``lmdeq._C`` (C++/CUDA)
-> ``lmdeq.ops`` (fused kernels behind custom ops) -> ``lmdeq.solvers`` (fixed point, Anderson, Broyden;
TorchDEQ's solver contract) -> ``lmdeq.deq`` (DEQ layer; gradients by ``Implicit`` / ``JFB`` / ``Phantom``) ->
``lmdeq.models`` (Lipschitz MDEQ with a certified bound) -> training, benchmarks, command line.
"""
__version__ = "0.1.0"

from . import ops, solvers  # noqa: E402
from .allocator import tune_cpu_allocator  # noqa: E402
from .deq import DEQ, JFB, Implicit, Phantom, deq_solve, jac_reg, power_method  # noqa: E402

__all__ = ["DEQ", "deq_solve", "Implicit", "JFB", "Phantom", "jac_reg", "power_method", "ops", "solvers",
           "tune_cpu_allocator", "__version__"]
