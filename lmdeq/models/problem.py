"""The MDEQ fixed-point problem of an input batch: z* = f(z*) with f(z) = cell(z, injection(stem(x))).

The state is the list of branch tensors z_i of shape (B, C_i, 32 / 2^i, 32 / 2^i); it starts at zero (f(0)
skips the convolutions of the zero state), keeps x's dtype (fp32) even when autocast computes f in bf16, and
the injection's memory format (channels_last when the model and input are), so f's outputs match it.

:func:`graphed_problem` describes that f for CUDA-graph replay (:class:`lmdeq.deq.GraphedProblem`): the injection
and the dropout masks are the per-call inputs (copied into static buffers); the cell's parameters and norm
estimates are read in place, so their storage is part of the key (moving the model re-captures), as are the caps'
scales an iteration budget sets (python constants of the capture), and the autocast state is part of every key
(GraphedProblem.run).

:func:`unrolled` is the original MDEQ recipe's unrolled warm-up (PRETRAIN_STEPS): f applied L times from z = 0
as an explicit network, z_L = f(...f(f(0))), trained by backpropagation through the L applications.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, List, Tuple

import torch
from torch import nn

from ..cuda_graphs import GraphCache
from ..deq import GraphedProblem
from ..numerics import relative_residual
from .constraints import capped_layers
from .mdeq_cell import MDEQCell

__all__ = ["cell_map", "fixed_point_problem", "graphed_problem", "unrolled"]


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


def graphed_problem(cell: MDEQCell, graphs: GraphCache, injection: torch.Tensor, training: bool) -> GraphedProblem:
    """The MDEQ's f for the injection ``injection`` as a :class:`~lmdeq.deq.GraphedProblem` (module docstring)."""
    storage = tuple(t.data_ptr() for t in cell.parameters()) + tuple(t.data_ptr() for t in cell.buffers())
    caps = tuple(c.cap_scale for c in capped_layers(cell))   # (a budget's cap scale is a constant of the capture)
    if any(scale != 1.0 for scale in caps):
        storage = storage + caps

    @contextmanager
    def bind(static):
        with cell.swapped_dropout_masks(static[1:]), cell.frozen_weights():
            yield cell_map(cell, static[0])

    return GraphedProblem(graphs, (training, storage), [injection, *cell.dropout_masks()], bind)


def unrolled(f: Callable, z0: List[torch.Tensor], layers: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(z_L, rel) with rel[b] = ||z_L - z_{L-1}|| / (||z_L|| + REL_EPS) over the whole state of sample b (no grad;
    :func:`lmdeq.numerics.relative_residual`)."""
    z = z0
    for _ in range(layers):
        z_prev, z = z, f(z)
    with torch.no_grad():
        diff = torch.stack([((a - b) ** 2).flatten(1).sum(1) for a, b in zip(z, z_prev)]).sum(0).sqrt()
        rel = relative_residual(diff, torch.stack([(a ** 2).flatten(1).sum(1) for a in z]).sum(0).sqrt())
    return z, rel
