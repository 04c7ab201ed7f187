"""CUDA-graph capture and replay of multi-launch computations (solves, the conv power iteration).

A *graphed call* is ``fn(static_inputs) -> (outputs, meta)``: ``outputs`` a list of tensors computed from
``static_inputs`` (and from tensors whose storage never moves, such as parameters updated in place),
``meta`` any Python value fixed at capture (e.g. a solver's step count). :class:`GraphCache` keeps one
capture per key:

* first call with a key: ``fn`` runs twice on a side stream (algorithm selection, compilation and
  allocator warm-up stay outside the capture), then once under ``torch.cuda.graph`` over static copies
  of the inputs;
* every call: the inputs are copied into the static buffers (one multi-tensor copy), the graph is
  replayed (one launch for all kernels of all iterations, no Python, no host sync) and the outputs are
  copied out into fresh tensors, so a caller may keep them while the graph runs again.

The key must change whenever ``fn`` would launch different work: shapes, dtypes, step counts, modes,
and the storage of the tensors ``fn`` reads without taking them as inputs. A computation that cannot
be captured (a host sync inside, say) is remembered and runs eagerly from then on. Graphs are used on
CUDA devices only, never while the caller is itself being captured (the launches then land in the
caller's graph), and not at all with ``LMDEQ_CUDA_GRAPHS=0``.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["GraphedCall", "GraphCache", "enabled_by_env"]

Fn = Callable[[List[Tensor]], Tuple[List[Tensor], Any]]


def enabled_by_env() -> bool:
    """False when ``LMDEQ_CUDA_GRAPHS=0``."""
    return os.environ.get("LMDEQ_CUDA_GRAPHS", "1") != "0"


class GraphedCall:
    """One captured CUDA graph of ``fn`` over static input buffers (see the module docstring)."""

    WARMUP_RUNS = 2

    @staticmethod
    def supports(device: torch.device) -> bool:
        return torch.device(device).type == "cuda" and not torch.cuda.is_current_stream_capturing()

    def __init__(self, fn: Fn, inputs: Sequence[Tensor]):
        self.static_in = [t.detach().clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_RUNS):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the implicit backward captures from an autograd worker thread.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            outputs, self.meta = fn(self.static_in)
        self.static_out = list(outputs)

    def __call__(self, inputs: Sequence[Tensor]) -> Tuple[List[Tensor], Any]:
        if self.static_in:
            torch._foreach_copy_(self.static_in, [t.detach() for t in inputs])
        self.graph.replay()
        outs = [torch.empty_like(t) for t in self.static_out]
        if outs:
            torch._foreach_copy_(outs, self.static_out)
        return outs, self.meta


class GraphCache:
    """Captured calls by key, least recently used first out beyond ``max_graphs``.

    ``call_type`` builds a capture from ``(fn, inputs)`` and says by ``supports(device)`` where it
    applies (:class:`GraphedCall`; the tests substitute a CPU double that re-runs ``fn`` on its static
    buffers). ``captures`` and ``replays`` count what happened, for tests and reports.
    """

    def __init__(self, max_graphs: int = 8, call_type=GraphedCall):
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be an int >= 1, got {max_graphs!r}")
        self.max_graphs = max_graphs
        self.call_type = call_type
        self._calls: "OrderedDict[Hashable, Optional[Any]]" = OrderedDict()
        self.captures = 0
        self.replays = 0
        self.failures: List[str] = []

    def enabled(self, device) -> bool:
        """Whether :meth:`__call__` would replay a graph for tensors on ``device`` now."""
        return enabled_by_env() and self.call_type.supports(torch.device(device))

    def clear(self) -> None:
        self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)

    def graphed(self, key: Hashable) -> bool:
        """Whether ``key`` has a capture that replays (False if unknown or if its capture failed)."""
        return self._calls.get(key) is not None

    def __call__(self, key: Hashable, fn: Fn, inputs: Sequence[Tensor]) -> Tuple[List[Tensor], Any]:
        """``fn(inputs)`` through the capture stored under ``key`` (captured now if missing)."""
        if key not in self._calls:
            try:
                self._calls[key] = self.call_type(fn, inputs)
                self.captures += 1
            except RuntimeError as err:  # not capturable: remember, and run eagerly from now on
                self._calls[key] = None
                self.failures.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
                warnings.warn(f"lmdeq: CUDA-graph capture failed, running eagerly: {self.failures[-1]}",
                              RuntimeWarning, stacklevel=2)
            while len(self._calls) > self.max_graphs:
                self._calls.popitem(last=False)
        self._calls.move_to_end(key)
        call = self._calls[key]
        if call is None:
            return fn(list(inputs))
        self.replays += 1
        return call(inputs)
