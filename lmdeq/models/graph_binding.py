"""The CUDA-graph description of the MDEQ's f (:class:`lmdeq.deq.GraphedProblem`): what a captured solve reads.

The injection and the dropout masks are the per-call inputs (copied into static buffers); the cell's parameters
and norm estimates are read in place, so their storage is part of the key (moving the model re-captures), and
the autocast state is part of every key (GraphedProblem.run).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..cuda_graphs import GraphCache
from ..deq import GraphedProblem
from .mdeq_cell import MDEQCell
from .problem import cell_map

__all__ = ["graphed_problem"]


def graphed_problem(cell: MDEQCell, graphs: GraphCache, injection: torch.Tensor, training: bool) -> GraphedProblem:
    storage = tuple(t.data_ptr() for t in cell.parameters()) + tuple(t.data_ptr() for t in cell.buffers())

    @contextmanager
    def bind(static):
        with cell.swapped_dropout_masks(static[1:]), cell.frozen_weights():
            yield cell_map(cell, static[0])

    return GraphedProblem(graphs, (training, storage), [injection, *cell.dropout_masks()], bind)
