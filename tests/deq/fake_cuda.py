"""A recording stand-in for the parts of torch.cuda that lmdeq.cuda_graphs.GraphedCall calls, so that its
device guard, stream handling and clean-up after a failed capture can be checked on a CPU machine.

It models what the real calls do to the state that matters here: the current device, each device's
current stream, the sync-debug mode, stream capture, and the caching allocator's "captures underway"
(begun by ``capture_begin``, ended by ``capture_end`` only *after* the stream capture ended — as in
ATen's CUDAGraph::capture_end, so an invalidated capture raises in between and leaves it behind, and
``empty_cache`` then fails like the real allocator's INTERNAL ASSERT). The tensors stay on the CPU.
"""
from __future__ import annotations

import contextlib
import itertools

import torch


class FakeStream:
    def __init__(self, cuda: "FakeCuda", index: int, name: str):
        self.cuda, self.device_index, self.name = cuda, index, name
        self.waited_on = []

    def wait_stream(self, other: "FakeStream") -> None:
        self.waited_on.append(other)

    def __repr__(self):
        return f"<stream {self.name} on cuda:{self.device_index}>"


class FakeGraph:
    def __init__(self, cuda: "FakeCuda"):
        self.cuda = cuda
        self.pool = None
        self.captured = False

    def capture_begin(self, pool=None, capture_error_mode="global"):
        cuda = self.cuda
        stream = cuda.current_stream()
        assert stream.name != "default", "capture on the default stream"
        self.pool, self.device, self.stream = pool, cuda.device_index, stream
        cuda.underway.add((self.device, pool))       # the allocator's beginAllocateToPool
        cuda.capturing.add(stream)
        cuda.events.append(("capture_begin", self.device, stream.name))

    def capture_end(self):
        cuda = self.cuda
        assert cuda.current_stream() is self.stream, "capture must end on the stream it began on"
        cuda.capturing.discard(self.stream)          # cudaStreamEndCapture ...
        cuda.events.append(("capture_end", self.device, self.stream.name))
        if cuda.invalidated:                          # ... fails for an invalidated capture, before
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        cuda.underway.discard((self.device, self.pool))  # ... the allocator's endAllocateToPool
        self.captured = True

    def replay(self):
        assert self.captured
        self.cuda.events.append(("replay", self.cuda.device_index, self.cuda.current_stream().name))


class FakeCuda:
    def __init__(self, devices: int = 2):
        self.device_index = 0
        self.streams = {i: FakeStream(self, i, "default") for i in range(devices)}
        self.sync_mode = 0
        self.capturing = set()
        self.underway = set()
        self.released = []
        self.events = []
        self.invalidated = False  # set by a test: the running capture was invalidated
        self._ids = itertools.count(1)

    # -- what the tests' functions call --------------------------------------------------------------
    def sync(self) -> None:
        """A synchronising CUDA call (``.item()``, say), as c10 treats it."""
        if self.sync_mode == 2:
            raise RuntimeError("called a synchronizing CUDA operation")
        if self.current_stream() in self.capturing:
            self.invalidated = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def empty_cache(self) -> None:
        assert not self.underway, "INTERNAL ASSERT FAILED: captures_underway.empty()"

    # -- torch.cuda ----------------------------------------------------------------------------------
    def current_stream(self, device=None) -> FakeStream:
        return self.streams[self._index(device)]

    def _index(self, device) -> int:
        """A device's index; the current device for None or an index-less device (the CPU tensors that
        stand in for CUDA tensors in the GraphCache tests)."""
        if isinstance(device, int):
            return device
        index = None if device is None else torch.device(device).index
        return self.device_index if index is None else index

    @contextlib.contextmanager
    def device(self, device):
        previous, self.device_index = self.device_index, self._index(device)
        try:
            yield
        finally:
            self.device_index = previous

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        previous_device, previous = self.device_index, self.streams[stream.device_index]
        self.device_index = stream.device_index
        self.streams[stream.device_index] = stream
        try:
            yield
        finally:
            self.streams[stream.device_index] = previous
            self.device_index = previous_device

    def new_stream(self, device=None) -> FakeStream:
        return FakeStream(self, self._index(device), f"side{next(self._ids)}")

    def set_sync_debug_mode(self, mode) -> None:
        self.sync_mode = {"default": 0, "warn": 1, "error": 2}.get(mode, mode)

    def install(self, monkeypatch) -> "FakeCuda":
        m = torch.cuda
        monkeypatch.setattr(m, "device", self.device)
        monkeypatch.setattr(m, "stream", self.stream)
        monkeypatch.setattr(m, "Stream", self.new_stream)
        monkeypatch.setattr(m, "current_stream", self.current_stream)
        monkeypatch.setattr(m, "current_device", lambda: self.device_index)
        monkeypatch.setattr(m, "CUDAGraph", lambda: FakeGraph(self))
        monkeypatch.setattr(m, "graph_pool_handle", lambda: (0, next(self._ids)))
        monkeypatch.setattr(m, "get_sync_debug_mode", lambda: self.sync_mode)
        monkeypatch.setattr(m, "set_sync_debug_mode", self.set_sync_debug_mode)
        monkeypatch.setattr(m, "is_current_stream_capturing", lambda: self.current_stream() in self.capturing)

        def end_allocate(index, pool):
            if (index, pool) not in self.underway:
                raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
            self.underway.discard((index, pool))

        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end_allocate, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda index, pool: self.released.append((index, pool)),
                            raising=False)
        return self
