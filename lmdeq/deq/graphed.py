"""The CUDA-graph binding of a DEQ problem: how :func:`lmdeq.deq_solve` runs a solve as one graph replay.

When a solve is a fixed-point solve (:class:`~lmdeq.solvers.FixedPoint`, the only solver graphed: Anderson's and
Broyden's dense solves are not proven capturable on every linear-algebra backend) that runs a fixed number of
steps (``exact=True``, so no host sync) on a CUDA device, the whole forward solve and the whole adjoint solve
(re-evaluation of f at z* plus every vector-Jacobian product) are each captured once per key and replayed as
one CUDA graph (the capture machinery is :mod:`lmdeq.cuda_graphs`); the tracked evaluation f(z*) and the
gradient into the parameters stay eager. Results equal the eager solves.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Hashable, List, Sequence

import torch

from ..cuda_graphs import GraphCache
from ..ops import backends
from ..solvers import FixedPoint, Solver, SolverInfo

__all__ = ["GraphedProblem", "GRAPHED_SOLVERS"]

GRAPHED_SOLVERS = (FixedPoint,)


@dataclass(frozen=True)
class GraphedProblem:
    """How :func:`deq_solve` may run its solves as CUDA-graph replays.

    * ``cache``: the :class:`~lmdeq.cuda_graphs.GraphCache` holding the captures (owned by the caller,
      e.g. a model, so they live as long as its parameters);
    * ``key``: everything besides ``inputs`` that f's work depends on (mode, the storage of the tensors
      it reads in place such as parameters; shapes, solver settings, the autocast state and the op
      backend are added);
    * ``inputs``: the tensors f reads that change from call to call (copied into static buffers);
    * ``bind(static_inputs)``: a context manager yielding a state -> state function that computes
      exactly f, but reads ``static_inputs`` in place of ``inputs``.
    """

    cache: GraphCache
    key: Hashable
    inputs: Sequence[torch.Tensor]
    bind: Callable[[List[torch.Tensor]], AbstractContextManager]

    def usable(self, device, solver: Solver) -> bool:
        """A fixed-point solver (:data:`GRAPHED_SOLVERS`) with a fixed step count (``exact``), CUDA (or the
        cache's device), graphs enabled."""
        return isinstance(solver, GRAPHED_SOLVERS) and solver.exact and self.cache.enabled(device)

    def run(self, tag: Hashable, body: Callable, state: Sequence[torch.Tensor], grad: bool):
        """``body(f, static_state) -> (parts, info)`` through the cache: returns (parts, info) where the
        info dict's tensors come from this replay and its Python values from the capture, and
        ``info.cuda_graph`` says whether this call was a graph replay."""
        inputs = list(self.inputs) + list(state)
        k = len(self.inputs)
        dev = inputs[0].device.type
        amp = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        # Same autocast state, but no cast cache: a cached cast made during warm-up would be baked into
        # the graph and go stale when the weights change (as torch.cuda.make_graphed_callables asks).
        autocast = torch.autocast(dev, dtype=amp[1], enabled=amp[0], cache_enabled=False)

        def fn(static):
            with torch.set_grad_enabled(grad), autocast, self.bind(static[:k]) as f:
                parts, info = body(f, static[k:])
            names = [n for n, v in info.items() if torch.is_tensor(v)]
            fixed = {n: v for n, v in info.items() if not torch.is_tensor(v)}
            return list(parts) + [info[n] for n in names], (len(parts), names, fixed)

        signature = tuple((tuple(t.shape), t.dtype, t.device, t.stride()) for t in inputs)
        key = (tag, self.key, amp, backends.choose(inputs[0].device), signature)
        outs, (n, names, fixed) = self.cache(key, fn, inputs)
        info = SolverInfo({**fixed, **dict(zip(names, outs[n:]))})
        info.cuda_graph = self.cache.graphed(key)  # an attribute: info's items stay tensors
        return outs[:n], info
