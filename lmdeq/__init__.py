"""lmdeq: fast, provably convergent deep equilibrium models.

Two wings (the whole map is in the README's Layout section and tests/test_layers.py). The library, bottom up:
shared facts (``lmdeq.numerics``, ``lmdeq.checks``, ``lmdeq.errors``) -> ``lmdeq.kernels`` (Triton) and
``lmdeq._C`` (C++/CUDA) -> ``lmdeq.cuda_graphs`` -> ``lmdeq.ops`` (fused kernels behind custom ops) ->
``lmdeq.solvers`` (fixed point, Anderson, Broyden; TorchDEQ's solver contract) -> ``lmdeq.deq`` (DEQ layer;
gradients by ``Implicit`` / ``JFB`` / ``Phantom``) -> ``lmdeq.models`` (Lipschitz MDEQ with a certified bound)
-> ``lmdeq.integrations`` (TorchDEQ); this package re-exports its API (``CertifiedDEQ``, ``lipschitz_bound``,
``verified_lipschitz_bound`` and ``register_lipschitz_rule`` from ``lmdeq.models`` on first use). The application, ``lmdeq.app`` (data,
training, benchmarks, the command line), sits on top of the library, which never imports it.
"""
__version__ = "0.1.0"

from . import ops, solvers  # noqa: E402
from .deq import DEQ, JFB, Implicit, Phantom, deq_solve, jac_reg, jacobian_norm, power_method  # noqa: E402
from .solvers import Anderson, Apriori, AuthorsAnderson, Broyden, FixedPoint  # noqa: E402

# The certified DEQ layer and the bound of a module tree (lmdeq.models), imported on first use.
_MODELS_API = ("CertifiedDEQ", "lipschitz_bound", "verified_lipschitz_bound", "register_lipschitz_rule")

__all__ = ["DEQ", "deq_solve", "Implicit", "JFB", "Phantom", "FixedPoint", "Anderson", "Broyden", "AuthorsAnderson",
           "Apriori", "jac_reg", "power_method", "jacobian_norm", "ops", "solvers", "__version__", *_MODELS_API]


def __getattr__(name):
    if name in _MODELS_API:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'lmdeq' has no attribute {name!r}")
