"""Which gradients the running backward pass needs, for the cell's custom autograd Functions.

:func:`gradient_needed` says whether a custom Function's backward must compute the gradient of one of
its inputs: the input must require grad and, where the engine can tell, the gradient's consumer must
run in this pass (``torch.autograd.grad`` with respect to other tensors skips it, so a vector-Jacobian
product with respect to the DEQ state skips the parameter terms). :func:`lmdeq.deq.adjoint_done` adds
the solved state z* once its adjoint solve has finished: the rest of the pass discards any gradient
with respect to it.
"""
from __future__ import annotations

import torch

__all__ = ["gradient_needed"]


def gradient_needed(ctx, index: int) -> bool:
    """Whether the running backward pass needs the gradient of input ``index`` of a custom Function (see
    the module docstring; uses torch._C._will_engine_execute_node where available, else assumes yes)."""
    if not ctx.needs_input_grad[index]:
        return False
    try:
        node = ctx.next_functions[index][0]
        return node is not None and torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError, IndexError):   # e.g. under torch.func transforms: assume needed
        return True
