"""GraphedCall against a recording stand-in of torch.cuda (tests/deq/fake_cuda.py): it captures and replays
on the inputs' device, and a failed warm-up or capture leaves no state behind (caller's stream current,
sync-debug mode restored, the allocator's capture into the pool ended, the pool released) and turns CUDA
graphs off for the process with one warning. The `gpu` test at the end does the same on a real device."""
import warnings

import pytest
import torch

from lmdeq import cuda_graphs
from lmdeq.cuda_graphs import GraphCache, GraphedCall

from .fake_cuda import FakeCuda

CUDA1 = torch.device("cuda", 1)


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_disabled", None)  # and restored to None after the test
    return FakeCuda().install(monkeypatch)


def _double(static):
    return [2.0 * static[0]], "meta"


def test_capture_and_replay_run_on_the_inputs_device(cuda):
    default1 = cuda.streams[1]
    x = torch.arange(3.0)
    call = GraphedCall(_double, [x], CUDA1)
    kinds = [(e[0], e[1]) for e in cuda.events]
    assert kinds == [("capture_begin", 1), ("capture_end", 1)]
    side = cuda.events[0][2]
    assert side.startswith("side")  # a side stream of cuda:1, not the caller's
    assert cuda.device_index == 0 and cuda.streams[1] is default1 and cuda.streams[0].name == "default"
    outs, meta = call([torch.full((3,), 5.0)])
    assert cuda.events[-1] == ("replay", 1, "default") and cuda.device_index == 0
    assert meta == "meta" and torch.equal(call.static_in[0], torch.full((3,), 5.0))
    assert not cuda.underway and not cuda.capturing


def test_supports_checks_capture_on_the_given_device(cuda):
    cuda.capturing.add(cuda.streams[1])
    assert GraphedCall.supports(torch.device("cuda", 0)) and not GraphedCall.supports(CUDA1)
    assert not GraphedCall.supports(torch.device("cpu"))


def _eager_count(fn):
    calls = []

    def counted(static):
        calls.append(1)
        return fn(static)

    return counted, calls


def test_sync_in_warm_up_fails_before_capture_and_turns_graphs_off(cuda):
    cuda.set_sync_debug_mode("warn")

    def syncs(static):
        cuda.sync()
        return _double(static)

    cache = GraphCache()
    x = torch.arange(3.0)
    with pytest.warns(RuntimeWarning, match="CUDA graphs are off for this process") as record:
        outs, meta = cache("a", syncs, [x])
    assert len(record) == 1 and torch.equal(outs[0], 2 * x) and meta == "meta"
    assert not [e for e in cuda.events if e[0] == "capture_begin"]  # failed before any capture
    assert cuda.sync_mode == 1 and cuda.device_index == 0 and cuda.streams[0].name == "default"
    assert cache.failures == ["called a synchronizing CUDA operation"] and cache.captures == 0
    assert "synchronizing" in cuda_graphs.disabled_reason()
    # Off for the process: another cache, another key, a capturable function: eager, no new warning.
    other = GraphCache()
    fn, calls = _eager_count(_double)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs, _ = other("b", fn, [x])
    assert calls == [1] and torch.equal(outs[0], 2 * x) and len(other) == 0
    assert not other.enabled(CUDA1)


def test_first_call_work_may_sync(cuda):
    """A sync on the first run only (a table upload, an algorithm search) is first-call work, outside
    the checked warm-up run: the capture goes ahead."""
    runs = []

    def syncs_once(static):
        if not runs:
            cuda.sync()
        runs.append(1)
        return _double(static)

    cache = GraphCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache("a", syncs_once, [torch.ones(2)])
    assert cache.captures == 1 and len(runs) == GraphedCall.WARMUP_RUNS + 1 and not cache.failures


def test_invalidated_capture_leaves_no_allocator_state_behind(cuda):
    state = {"warm": 0}

    def syncs_only_when_captured(static):  # the warm-up cannot see it: only the capture fails
        state["warm"] += 1
        if state["warm"] > GraphedCall.WARMUP_RUNS:
            cuda.sync()
        return _double(static)

    cache = GraphCache()
    x = torch.arange(3.0)
    with pytest.warns(RuntimeWarning, match="not permitted when stream is capturing"):
        outs, _ = cache("a", syncs_only_when_captured, [x.to(torch.float64)])
    assert torch.equal(outs[0], 2 * x.double())
    assert not cuda.capturing and not cuda.underway
    cuda.empty_cache()  # what every later torch.cuda.graph does first: it must not assert
    assert len(cuda.released) == 1  # the pool of the abandoned capture
    assert cuda.device_index == 0 and all(s.name == "default" for s in cuda.streams.values())


def test_failed_capture_end_is_cleaned_up(cuda):
    def invalidates(static):  # an unsupported call that does not raise, but invalidates the capture
        if cuda.capturing:
            cuda.invalidated = True
        return _double(static)

    with pytest.raises(RuntimeError, match="previous error during capture"):
        GraphedCall(invalidates, [torch.ones(2)], CUDA1)
    assert not cuda.underway and cuda.released and cuda.streams[1].name == "default"
    cuda.empty_cache()


def test_error_in_fn_after_a_clean_capture_end_keeps_the_graphs_pool(cuda):
    state = {"runs": 0}

    def fails_in_capture(static):
        state["runs"] += 1
        if state["runs"] > GraphedCall.WARMUP_RUNS:
            raise ValueError("bad shape")
        return _double(static)

    with pytest.raises(ValueError, match="bad shape"):
        GraphedCall(fails_in_capture, [torch.ones(2)], CUDA1)
    # capture_end succeeded and ended the allocator's capture itself; the graph releases its pool
    assert not cuda.underway and not cuda.released and not cuda.capturing


@pytest.mark.gpu
def test_failed_capture_on_gpu_leaves_the_process_usable(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_disabled", None)
    x = torch.randn(64, device="cuda")

    def syncs_in_capture(static):
        y = static[0] * 2
        if torch.cuda.is_current_stream_capturing():
            y = y * float(y.sum())  # a host sync: invalidates the capture
        return [y], None

    stream = torch.cuda.current_stream()
    with pytest.raises(RuntimeError):
        GraphedCall(syncs_in_capture, [x], x.device)  # warm-up passes, the capture is invalidated
    assert torch.cuda.current_stream() == stream and not torch.cuda.is_current_stream_capturing()
    torch.cuda.empty_cache()  # no "captures_underway" assert
    g = torch.cuda.CUDAGraph()  # a later, independent capture works
    static = torch.zeros(64, device="cuda")
    with torch.cuda.graph(g):
        out = static * 3
    static.copy_(x)
    g.replay()
    torch.testing.assert_close(out, 3 * x)
    # and through the cache: warm-up sees the sync, graphs go off, the call runs eagerly
    with pytest.warns(RuntimeWarning, match="CUDA graphs are off"):
        outs, _ = GraphCache()("k", lambda s: ([s[0] * float(s[0].sum())], None), [x])
    torch.testing.assert_close(outs[0], x * float(x.sum()))
