"""lmdeq's public ops: fused kernels behind ``torch.library`` custom ops (namespace ``lmdeq``).

Each op has a plain-PyTorch reference (``lmdeq.ops.reference``, the source of truth), a Triton kernel
(``lmdeq.kernels``) and C++ CPU / CUDA kernels (``lmdeq._C``, namespace ``lmdeq_C``), plus a fake
implementation for tracing (torch.compile, opcheck). The backend is chosen per call
(``lmdeq.ops.backends``; LMDEQ_BACKEND=auto|cuda|triton|cpu|torch); ``python -m lmdeq.app.info`` shows
the choice and why other backends are unavailable.
"""
from . import backends, reference
from .anderson import anderson_gram_row, anderson_mix
from .fixed_point_update import fixed_point_update, fixed_point_update_multi
from .power_iteration import conv_power_iteration, power_iteration_matrices

OP_NAMES = (
    "fixed_point_update",
    "fixed_point_update_multi",
    "anderson_gram_row",
    "anderson_mix",
    "power_iteration_matrices",
    "conv_power_iteration",
)

__all__ = [*OP_NAMES, "OP_NAMES", "backends", "reference"]
