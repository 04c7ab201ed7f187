"""Triton kernels of lmdeq's ops.

The public entry points are host launchers that take tensors already validated and laid out by
``lmdeq.ops`` (use ``lmdeq.ops.<name>`` with LMDEQ_BACKEND=triton to call them safely). Kernels run
on CUDA tensors, or on CPU tensors under the Triton interpreter: ``TRITON_INTERPRET=1`` must be set
before this package is imported (``INTERPRETED`` records whether it was).
"""
import os

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

from .anderson import anderson_gram_row, anderson_mix  # noqa: E402
from .conv_power_iteration import conv_power_iteration  # noqa: E402
from .fixed_point_update import fixed_point_update_multi  # noqa: E402
from .power_iteration import power_iteration_matrices  # noqa: E402

__all__ = ["INTERPRETED", "anderson_gram_row", "anderson_mix", "conv_power_iteration", "fixed_point_update_multi",
           "power_iteration_matrices"]
