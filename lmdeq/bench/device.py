"""Naming and timing helpers shared by the benchmarks: which device ran, with which versions, and a
synchronised wall-clock timer."""
from __future__ import annotations

import platform
import re
import statistics
import time
from typing import Callable, List

import torch

from ..allocator import allocator_state

__all__ = ["device_name", "device_slug", "environment", "sync", "time_call"]


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU model, or CPU model and thread count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """File-name-safe short name: 'nvidia-h200', 'cpu-amd-epyc-...'."""
    name = device_name(device)
    if torch.device(device).type == "cpu":
        name = "cpu-" + name.split("(")[0]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:60]


def environment(device: torch.device) -> dict:
    """Versions and device recorded next to every benchmark result."""
    env = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
           "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "allocator": allocator_state()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> List[float]:
    """Wall-clock seconds of ``fn()`` per repeat, synchronising the device before reading the clock."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(xs: List[float]) -> float:
    return statistics.median(xs)
