"""CUDA-graph capture and replay of multi-launch computations (solves, the conv power iteration).

A *graphed call* is ``fn(static_inputs) -> (outputs, meta)``: ``outputs`` a list of tensors computed from
``static_inputs`` (and from tensors whose storage never moves, such as parameters updated in place),
``meta`` any Python value fixed at capture (e.g. a solver's step count). :class:`GraphCache` keeps one
capture per key:

* first call with a key: ``fn`` runs twice on a side stream of the inputs' device: once as it is
  (first-call work such as algorithm selection, compilation, table uploads and allocator warm-up stays
  outside the capture), then with synchronising CUDA calls turned into errors
  (``torch.cuda.set_sync_debug_mode("error")``), so steady-state work that cannot be captured fails
  here, before any capture begins. Then ``fn`` runs once more under stream capture, over static copies
  of the inputs, into a memory pool of the graph's own;
* every call: the inputs are copied into the static buffers (one multi-tensor copy), the graph is
  replayed (one launch for all kernels of all iterations, no Python, no host sync) and the outputs are
  copied out into fresh tensors, so a caller may keep them while the graph runs again.

Capture and replay run under ``torch.cuda.device`` of the inputs' device (tensors on cuda:1 while
cuda:0 is current are captured on cuda:1's stream). A capture costs the two warm-up runs and the
captured run, nothing else (no device-wide synchronize, garbage collection or cache release).

A failed warm-up or capture is cleaned up completely: the caller's stream is current again, the
allocator's capture into the graph's pool is ended and the pool released (``torch.cuda.graph`` leaves
both behind when the capture is invalidated, after which every ``empty_cache`` fails an internal
assert). Then CUDA graphs are turned off for the whole process, with one warning, and every graphed
call runs eagerly from then on (:func:`disabled_reason` says why).

The key must change whenever ``fn`` would launch different work: shapes, dtypes, step counts, modes,
the op backend, and the storage of the tensors ``fn`` reads without taking them as inputs. Graphs are
used on CUDA devices only, never while the caller is itself being captured (the launches then land in
the caller's graph), and not at all with ``LMDEQ_CUDA_GRAPHS=0``.
"""
from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import checks
from .errors import first_line

__all__ = ["GraphedCall", "GraphCache", "enabled_by_env", "disabled_reason"]

Fn = Callable[[List[Tensor]], Tuple[List[Tensor], Any]]

_disabled: Optional[str] = None  # why a capture failed in this process (graphs are then off), or None


def enabled_by_env() -> bool:
    """False when ``LMDEQ_CUDA_GRAPHS=0`` (a value other than 0 or 1 is a ConfigError naming the variable)."""
    return checks.env_flag("LMDEQ_CUDA_GRAPHS", True)


def disabled_reason() -> Optional[str]:
    """Why CUDA graphs are off in this process (``LMDEQ_CUDA_GRAPHS=0`` or a failed capture), or None."""
    if not enabled_by_env():
        return "LMDEQ_CUDA_GRAPHS=0"
    return _disabled


def _disable(reason: str) -> None:
    """Turn graphs off for the process after a failed capture; warns the first time only."""
    global _disabled
    if _disabled is None:
        _disabled = reason
        warnings.warn(f"lmdeq: CUDA-graph capture failed ({reason}); CUDA graphs are off for this process and "
                      "every graphed solve runs eagerly (LMDEQ_CUDA_GRAPHS=0 skips the attempt)",
                      RuntimeWarning, stacklevel=3)


def _private(*names: str):
    """The first of torch._C's private allocator bindings that exists (their names moved across releases)."""
    for name in names:
        fn = getattr(torch._C, name, None)
        if fn is not None:
            return fn
    return None


class GraphedCall:
    """One captured CUDA graph of ``fn`` over static input buffers on ``device`` (see the module
    docstring). Construction warms up and captures; it raises (after cleaning up) if either fails."""

    WARMUP_RUNS = 2

    @staticmethod
    def supports(device: torch.device) -> bool:
        device = torch.device(device)
        if device.type != "cuda":
            return False
        with torch.cuda.device(device):
            return not torch.cuda.is_current_stream_capturing()

    def __init__(self, fn: Fn, inputs: Sequence[Tensor], device: torch.device):
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.static_in = [t.detach().clone() for t in inputs]
            caller = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(caller)
            with torch.cuda.stream(side):  # the caller's stream is current again on exit, errors included
                self._warm_up(fn)
                self.graph, outputs, self.meta = self._capture(fn)
            caller.wait_stream(side)
        self.static_out = list(outputs)

    def _warm_up(self, fn: Fn) -> None:
        for _ in range(self.WARMUP_RUNS - 1):
            fn(self.static_in)
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")  # a host sync is not capturable: fail now, not mid-capture
        try:
            fn(self.static_in)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    def _capture(self, fn: Fn):
        graph = torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()  # our own pool id: graph.pool() is unavailable after a failure
        try:
            # thread_local: the implicit backward captures from an autograd worker thread.
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            outputs, meta = fn(self.static_in)
        except BaseException:
            self._abandon(graph, pool, end_capture=True)
            raise
        try:
            graph.capture_end()
        except BaseException:
            self._abandon(graph, pool, end_capture=False)
            raise
        return graph, outputs, meta

    def _abandon(self, graph, pool, end_capture: bool) -> None:
        """Undo what a failed capture left behind: the stream capture (``end_capture``: fn raised while
        capturing), the allocator's capture into ``pool`` and the pool. CUDAGraph.capture_end ends the
        stream capture before the allocator's, so an invalidated capture raises in between and leaves the
        allocator capturing; and a graph whose capture never ended does not release its pool."""
        if end_capture:
            try:
                graph.capture_end()
            except Exception:  # noqa: BLE001 - an invalidated capture fails to end; the stream is out of it
                pass
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        end = _private("_cuda_endAllocateToPool", "_cuda_endAllocateCurrentStreamToPool")
        release = _private("_cuda_releasePool")
        if end is not None:
            try:
                end(index, pool)
            except Exception:  # noqa: BLE001 - "not currently recording": capture_end completed, and the
                return         # graph releases its pool when it is destroyed
        if release is not None:
            try:
                release(index, pool)
            except Exception:  # noqa: BLE001
                pass

    def __call__(self, inputs: Sequence[Tensor]) -> Tuple[List[Tensor], Any]:
        with torch.cuda.device(self.device):
            if self.static_in:
                torch._foreach_copy_(self.static_in, [t.detach() for t in inputs])
            self.graph.replay()
            outs = [torch.empty_like(t) for t in self.static_out]
            if outs:
                torch._foreach_copy_(outs, self.static_out)
        return outs, self.meta


class GraphCache:
    """Captured calls by key, least recently used first out beyond ``max_graphs``.

    ``call_type`` builds a capture from ``(fn, inputs, device)`` and says by ``supports(device)`` where it
    applies (:class:`GraphedCall`; the tests substitute a CPU double that re-runs ``fn`` on its static
    buffers). :meth:`stats` counts what happened (captures, replays, failures, evictions and the seconds
    spent capturing), for tests and benchmark reports.
    """

    def __init__(self, max_graphs: int = 8, call_type=GraphedCall):
        self.max_graphs = checks.integer("max_graphs", max_graphs, 1)
        self.call_type = call_type
        self._calls: "OrderedDict[Hashable, Any]" = OrderedDict()
        self.captures = 0
        self.replays = 0
        self.evictions = 0
        self.capture_seconds = 0.0
        self.failures: List[str] = []

    def enabled(self, device) -> bool:
        """Whether :meth:`__call__` would replay a graph for tensors on ``device`` now."""
        return disabled_reason() is None and self.call_type.supports(torch.device(device))

    def stats(self) -> dict:
        """Counters since construction: ``captures``, ``replays``, ``failures``, ``evictions``,
        ``capture_s`` (wall seconds spent in warm-up and capture) and ``graphs`` (captures held now)."""
        return {"captures": self.captures, "replays": self.replays, "failures": len(self.failures),
                "evictions": self.evictions, "capture_s": self.capture_seconds, "graphs": len(self._calls)}

    def clear(self) -> None:
        self._calls.clear()

    def __len__(self) -> int:
        return len(self._calls)

    def graphed(self, key: Hashable) -> bool:
        """Whether ``key`` has a capture that replays."""
        return key in self._calls

    def __call__(self, key: Hashable, fn: Fn, inputs: Sequence[Tensor]) -> Tuple[List[Tensor], Any]:
        """``fn(inputs)`` through the capture stored under ``key`` (captured now if missing); eager when
        graphs are off or the capture fails (which turns them off for the process)."""
        if key not in self._calls:
            if disabled_reason() is not None:
                return fn(list(inputs))
            if not inputs:
                raise ValueError("GraphCache: a graphed call needs at least one input tensor (its device)")
            start = time.perf_counter()
            try:
                call = self.call_type(fn, inputs, inputs[0].device)
            except Exception as err:  # noqa: BLE001 - any failure means: not capturable, run eagerly
                self.failures.append(first_line(err))
                _disable(self.failures[-1])
                return fn(list(inputs))
            finally:
                self.capture_seconds += time.perf_counter() - start
            self._calls[key] = call
            self.captures += 1
            while len(self._calls) > self.max_graphs:
                self._calls.popitem(last=False)
                self.evictions += 1
        self._calls.move_to_end(key)
        self.replays += 1
        return self._calls[key](inputs)
