"""CPU allocator tuning for big-tensor work under glibc (Linux).

glibc's malloc serves a request above ``M_MMAP_THRESHOLD`` with a fresh ``mmap`` and unmaps it on free,
and returns the top of its heap to the system once more than ``M_TRIM_THRESHOLD`` is free there (by
default both thresholds adapt, up to 32 MiB and 64 MiB). A training step of an MDEQ allocates and frees
hundreds of MiB of activations, so by default every step maps fresh pages and pays one page fault per
4 KiB on first touch; on the machines we measured, that cost more than the arithmetic (a training step
6-9x slower). Pinning the thresholds (mmap above 32 MiB only, trim only past 1 GiB free) keeps freed
memory in the process for the next step.

* :func:`tune_cpu_allocator` pins them in the calling process (``mallopt``), the one-line opt-in for a
  user's own training script: ``from lmdeq.app.allocator import tune_cpu_allocator; tune_cpu_allocator()``.
  ``import lmdeq`` alone never changes the allocator.
* lmdeq's own processes (``lmdeq train / eval / bench``, the benchmark scripts) call
  :func:`configure_process` first thing; ``LMDEQ_TUNE_ALLOCATOR=0`` leaves glibc's defaults.
* :func:`allocator_state` says what holds in this process (``lmdeq info`` and every benchmark JSON
  record it). glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables,
  read at process start, are reported as such.

The cost: a process keeps up to ``trim_threshold`` of freed heap memory mapped (resident until reused).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

from .. import checks
from ..errors import ConfigError

__all__ = ["tune_cpu_allocator", "configure_process", "allocator_state", "describe", "ENV_VAR",
           "DEFAULT_MMAP_THRESHOLD", "DEFAULT_TRIM_THRESHOLD"]

ENV_VAR = "LMDEQ_TUNE_ALLOCATOR"
DEFAULT_MMAP_THRESHOLD = 32 * 2**20   # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
DEFAULT_TRIM_THRESHOLD = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameter numbers (malloc.h)
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_state: dict = {}


def _glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (its ``mallopt`` is what we set), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                       trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> dict:
    """Pin glibc's mmap and trim thresholds in this process (see the module docstring); returns
    :func:`allocator_state`. A no-op, saying why, where the C library is not glibc. Call it before the
    first large tensor is allocated; calling it again re-applies the given values."""
    mmap_threshold = checks.integer("mmap_threshold (bytes)", mmap_threshold, 0)
    trim_threshold = checks.integer("trim_threshold (bytes)", trim_threshold, 0)
    if mmap_threshold > DEFAULT_MMAP_THRESHOLD:
        raise ConfigError(f"mmap_threshold must be <= {DEFAULT_MMAP_THRESHOLD} (glibc's limit on 64-bit), "
                         f"got {mmap_threshold}")
    if trim_threshold >= 2**31:
        raise ConfigError(f"trim_threshold must be < 2**31 (mallopt takes an int), got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        _state.update(tuned=False, source="unsupported", reason="not Linux with glibc: allocator left as is")
        return allocator_state()
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
    if not ok:
        _state.update(tuned=False, source="mallopt", reason="mallopt refused the values")
    else:
        _state.update(tuned=True, source="mallopt", mmap_threshold=mmap_threshold, trim_threshold=trim_threshold,
                      reason=None)
    return allocator_state()


def configure_process() -> dict:
    """What lmdeq's own entry points call first: tune unless ``LMDEQ_TUNE_ALLOCATOR=0``, or unless glibc's
    own environment variables already set the thresholds (then those stand)."""
    if not checks.env_flag(ENV_VAR, True):
        _state.update(tuned=False, source="off", reason=f"{ENV_VAR}=0")
        return allocator_state()
    if _glibc_env():
        return allocator_state()
    return tune_cpu_allocator()


def _glibc_env() -> dict:
    """glibc's threshold variables that are set, as byte counts; a value glibc would not read as a byte count
    (not a non-negative integer) is a ConfigError naming the variable, never reported as a setting."""
    out = {}
    for name in _GLIBC_ENV:
        text = os.environ.get(name)
        if not text:
            continue
        if not text.strip().isdigit() or int(text) >= 2 ** 63:
            raise ConfigError(f"{name}={text!r} is not a byte count (a non-negative integer below 2**63); "
                              f"unset it or give the threshold in bytes")
        out[name] = int(text)
    return out


def allocator_state() -> dict:
    """How this process's CPU allocator is set: ``tuned`` (bool), ``source`` ('mallopt', 'environment',
    'off', 'unsupported' or 'default'), the thresholds in bytes where known, and ``reason``."""
    env = _glibc_env()
    if env and not _state.get("tuned"):
        return {"tuned": True, "source": "environment", **{k.lower().strip("_"): v for k, v in env.items()},
                "reason": None}
    if _state:
        return dict(_state)
    return {"tuned": False, "source": "default", "reason": "glibc defaults (adaptive mmap/trim thresholds)"}


def describe() -> str:
    """One line for ``lmdeq info``."""
    s = allocator_state()
    if s["tuned"] and s["source"] == "mallopt":
        return (f"CPU allocator: tuned (mmap threshold {s['mmap_threshold'] >> 20} MiB, trim threshold "
                f"{s['trim_threshold'] >> 20} MiB; {ENV_VAR}=0 to keep glibc's defaults)")
    if s["tuned"]:
        return f"CPU allocator: set by the environment ({', '.join(f'{k}={v}' for k, v in s.items() if 'threshold' in k)})"
    return f"CPU allocator: not tuned ({s['reason']})"
