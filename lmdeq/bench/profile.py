"""Where the time of one training step goes: the step run once under torch.profiler, split into the
phases that lmdeq and the benchmark mark with ``torch.profiler.record_function`` and the operators
that take the most time.

Clock: on CUDA, device time (kernel and copy durations; a phase's time is that of the kernels launched
inside it, its busy time the sum over all kernels), so host overhead shows as busy < wall; on CPU, host
time of the ranges. ``rest`` is what no phase covers (stem, head, loss, the backward pass through the
tracked f(z*) into the parameters).
"""
from __future__ import annotations

import time
from typing import Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile

from .device import sync

__all__ = ["PHASES", "profile_step"]

# record_function names -> report names. Ranges of one name are summed over their calls.
PHASES = {
    "lmdeq::forward_solve": "forward solve",
    "lmdeq::tracked_f": "tracked f(z*)",
    "lmdeq::adjoint_solve": "adjoint solve",
    "bench::optimizer_step": "optimizer step",
    "bench::constraint_step": "constraint upkeep",
}


def profile_step(step: Callable[[], object], device: torch.device, top: int = 8) -> Dict:
    """Profile one call of ``step`` on ``device``; returns wall and busy milliseconds, the phases'
    milliseconds (plus ``rest``) and the ``top`` operators by self time."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    device = torch.device(device)
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        sync(device)
        wall_ms = 1e3 * (time.perf_counter() - t0)
    events = prof.key_averages()
    if on_device:
        def total(e): return e.device_time_total / 1e3
        def self_ms(e): return e.self_device_time_total / 1e3
        busy_ms = sum(self_ms(e) for e in events)
    else:
        def total(e): return e.cpu_time_total / 1e3
        def self_ms(e): return e.self_cpu_time_total / 1e3
        busy_ms = wall_ms
    by_key = {e.key: e for e in events}
    phases = {label: (total(by_key[key]) if key in by_key else 0.0) for key, label in PHASES.items()}
    phases["rest"] = busy_ms - sum(phases.values())
    ops = sorted((e for e in events if e.key not in PHASES and self_ms(e) > 0), key=self_ms, reverse=True)
    return {
        "clock": "device" if on_device else "host",
        "wall_ms": wall_ms,
        "busy_ms": busy_ms,
        "phases_ms": phases,
        "top_ops": [{"name": e.key, "self_ms": self_ms(e), "calls": e.count} for e in ops[:top]],
    }
