"""CUDA-graph replay of a whole multi-launch op (used for the conv power iteration).

The first call with a new signature (shapes, dtypes, options) warms the op up on a side stream and
captures it into a graph over static input buffers; later calls copy the inputs in (one multi-tensor
copy), replay the graph (one launch for all layers and iterations) and copy the outputs out into
fresh tensors. Skipped while the caller is itself capturing a graph (the launches then land in the
caller's graph) and when LMDEQ_CUDA_GRAPHS=0. An op that cannot be captured runs eagerly.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Hashable, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["enabled", "replay"]

_MAX_GRAPHS = 8
_cache: "OrderedDict[Hashable, _Captured | None]" = OrderedDict()

Fn = Callable[[List[Tensor]], Tuple[Tensor, List[Tensor]]]


def enabled(device: torch.device) -> bool:
    """Whether :func:`replay` would use a graph for tensors on ``device`` now."""
    return (torch.device(device).type == "cuda" and os.environ.get("LMDEQ_CUDA_GRAPHS", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


class _Captured:
    def __init__(self, fn: Fn, inputs: Sequence[Tensor]):
        self.static_in = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # algorithm choices, compilation and caches happen outside the capture
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            sigmas, vs = fn(self.static_in)
        self.static_out = [sigmas, *vs]

    def __call__(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        torch._foreach_copy_(self.static_in, list(inputs))
        self.graph.replay()
        outs = [torch.empty_like(t) for t in self.static_out]
        torch._foreach_copy_(outs, self.static_out)
        return outs[0], outs[1:]


def replay(key: Hashable, fn: Fn, inputs: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """fn(inputs) -> (tensor, list of tensors), run through a cached CUDA graph keyed by ``key``."""
    if key not in _cache:
        try:
            _cache[key] = _Captured(fn, inputs)
        except RuntimeError:
            _cache[key] = None  # not capturable (e.g. a host sync inside): run eagerly from now on
        while len(_cache) > _MAX_GRAPHS:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    captured = _cache[key]
    if captured is None:
        return fn(list(inputs))
    return captured(inputs)
