"""lmdeq's public ops. Each is a torch.library custom op with a fake implementation; the backend
(cuda extension > triton > C++ CPU > torch reference) is chosen at run time (LMDEQ_BACKEND overrides).

Until the fused kernels land, these names point to the plain-PyTorch references.
"""
from .reference import (
    anderson_gram_row,
    anderson_mix,
    conv_power_iteration,
    fixed_point_update,
    fixed_point_update_multi,
    power_iteration_matrices,
)

__all__ = [
    "fixed_point_update",
    "fixed_point_update_multi",
    "anderson_gram_row",
    "anderson_mix",
    "power_iteration_matrices",
    "conv_power_iteration",
]
