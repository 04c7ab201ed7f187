"""The MDEQ fixed-point problem of an input batch: z* = f(z*) with f(z) = cell(z, injection(stem(x))).

The state is the list of branch tensors z_i of shape (B, C_i, 32 / 2^i, 32 / 2^i); it starts at zero (f(0)
skips the convolutions of the zero state), keeps x's dtype (fp32) even when autocast computes f in bf16, and
the injection's memory format (channels_last when the model and input are), so f's outputs match it.
"""
from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn

from .mdeq_cell import MDEQCell

__all__ = ["cell_map", "fixed_point_problem"]


def cell_map(cell: MDEQCell, injection: torch.Tensor) -> Callable[[List[torch.Tensor]], List[torch.Tensor]]:
    """z -> f(z) = cell(z, injection), returned in the state's dtype (under autocast the cell computes in low
    precision; the solver's state, residuals and updates stay in the state's dtype)."""
    def f(z):
        return [out.to(zi.dtype) for out, zi in zip(cell(z, injection), z)]

    return f


def fixed_point_problem(stem: nn.Module, injection: nn.Module, cell: MDEQCell, x: torch.Tensor):
    """(f, z0, injection tensor) for the images ``x`` (already checked), with this forward pass's dropout masks
    drawn."""
    inj = injection(stem(x))
    batch = x.shape[0]
    cell.reset_dropout(batch, inj.device, inj.dtype)
    fmt = torch.channels_last if inj.is_contiguous(memory_format=torch.channels_last) and \
        not inj.is_contiguous() else torch.contiguous_format
    z0 = cell.zero_state(batch, x.dtype, inj.device, fmt)
    return cell_map(cell, inj), z0, inj
