"""When a public op may skip the torch.library machinery.

The custom ops (``torch.ops.lmdeq.*``) are what torch.compile, autograd, fake tensors and
``opcheck`` see. A plain eager call on plain tensors that needs no gradient gains nothing from them
but their Python dispatch overhead (tens of microseconds, more than the fused kernel itself takes
on a GPU for an MDEQ state), so the public functions then call the chosen backend directly.
"""
from __future__ import annotations

import torch


def eager_fast_path(*tensors: torch.Tensor) -> bool:
    """True for plain tensors outside tracing, dispatch modes and functorch transforms, with no
    input requiring a gradient (under grad mode)."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active()):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if type(t) is not torch.Tensor or (grad and t.requires_grad):
            return False
    return True
