"""Helpers shared by the benchmarks: which device ran, with which versions and allocator, how loaded the
machine was (load average at the start and end of a run), and device synchronisation for timers."""
from __future__ import annotations

import os
import platform
import re
from typing import Dict, List, Optional

import torch

from ..allocator import allocator_state

__all__ = ["device_name", "device_slug", "environment", "sync", "load_average", "load_record"]


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


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages of the machine (None where the OS does not report them)."""
    try:
        return [float(v) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_record(start: Optional[List[float]], end: Optional[List[float]], threads: int) -> Dict:
    """What a benchmark result records about the machine's load: the load averages at its start and end,
    the thread count it ran with, and a warning (else None) when a 1-minute load average is above that
    thread count, i.e. other work competed for the cores and the timings are not those of a quiet
    machine."""
    record = {"loadavg_start": start, "loadavg_end": end, "threads": threads, "cpu_count": os.cpu_count(),
              "warning": None}
    peaks = [la[0] for la in (start, end) if la]
    if peaks and max(peaks) > threads:
        record["warning"] = (f"machine load {max(peaks):.2f} (1-minute average, start {_fmt_load(start)}, end "
                             f"{_fmt_load(end)}) is above the {threads} threads used: other work competed "
                             f"for the cores, so these timings are not those of a quiet machine")
    return record


def _fmt_load(la: Optional[List[float]]) -> str:
    return "n/a" if not la else f"{la[0]:.2f}"


def fmt_loads(la: Optional[List[float]]) -> str:
    """The 1/5/15-minute load averages as '1.00/0.80/0.50' ('n/a' where none were read)."""
    return "n/a" if not la else "/".join(f"{x:.2f}" for x in la)
