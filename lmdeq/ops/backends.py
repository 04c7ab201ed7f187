"""Which implementation runs an op, decided at call time.

Backends, best first:

* ``cuda``   -- the CUDA kernels of the compiled extension ``lmdeq._C`` (CUDA tensors);
* ``triton`` -- the Triton kernels of ``lmdeq.kernels`` (CUDA tensors; CPU tensors only under the
  Triton interpreter, ``TRITON_INTERPRET=1`` set before the kernels are imported);
* ``cpu``    -- the C++ CPU kernels of ``lmdeq._C`` (CPU tensors);
* ``torch``  -- the plain-PyTorch reference ``lmdeq.ops.reference`` (any device, always there).

``LMDEQ_BACKEND=auto`` (default) picks cuda > triton for CUDA tensors and cpu > torch for CPU
tensors; ``LMDEQ_BACKEND=cuda|triton|cpu|torch`` forces one, and a forced backend that cannot run
raises RuntimeError saying why. On load, the extension is checked against the running torch (the
version it was compiled for is baked into the binary); a mismatch disables it with a warning.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional, Tuple

import torch

__all__ = ["BACKENDS", "ENV_VAR", "choose", "extension", "build_info", "requested", "unavailable_reason",
           "triton_kernels"]

BACKENDS = ("cuda", "triton", "cpu", "torch")
ENV_VAR = "LMDEQ_BACKEND"
_REBUILD = "rebuild it: pip install --no-build-isolation --no-deps -e ."


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    """The build record written by setup.py (lmdeq/_build_info.json); {} when missing."""
    path = Path(__file__).resolve().parent.parent / "_build_info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _release(version: str) -> str:
    """'2.11.0+cu128' -> '2.11.0'."""
    return version.split("+")[0]


@functools.lru_cache(maxsize=None)
def _load_extension() -> Tuple[Optional[ModuleType], Optional[str]]:
    info = build_info()
    built_for = info.get("torch")
    if built_for and _release(built_for) != _release(torch.__version__):
        reason = (f"extension lmdeq._C was built for torch {built_for} but torch {torch.__version__} is "
                  f"running; {_REBUILD}")
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return None, reason
    try:
        ext = importlib.import_module("lmdeq._C")
    except ImportError as exc:
        why = info.get("reason") if info.get("extension") is False else str(exc)
        return None, f"extension lmdeq._C not built ({why})"
    if _release(ext.torch_version) != _release(torch.__version__):
        reason = (f"extension lmdeq._C was compiled against torch {ext.torch_version} but torch "
                  f"{torch.__version__} is running; {_REBUILD}")
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return None, reason
    return ext, None


def extension() -> Optional[ModuleType]:
    """The loaded, version-checked ``lmdeq._C`` module, or None (see :func:`unavailable_reason`)."""
    return _load_extension()[0]


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _major_minor(version: str) -> Tuple[int, int]:
    """'3.6.0' / '2.4.0rc1' -> (3, 6) / (2, 4)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"cannot read a version from {version!r}")
    return int(match.group(1)), int(match.group(2))


def _interpreter_defect(triton_version: str, numpy_version: str) -> Optional[str]:
    """Why this Triton's interpreter cannot run lmdeq's kernels with this numpy, or None.

    Triton's interpreter before 3.7 converts a runtime scalar argument (a 1-element array) with
    ``int(array)``, which numpy 2.4 forbids; every kernel that loops over a runtime bound then fails
    (triton-lang/triton#9171, fixed in Triton 3.7). Compiled (GPU) kernels are not affected."""
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (f"the interpreter of Triton {triton_version} cannot run with numpy {numpy_version} "
                "(triton-lang/triton#9171): install numpy<2.4 or Triton>=3.7")
    return None


def _triton_reason(device_type: str) -> Optional[str]:
    if not _triton_importable():
        return "not installed"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if _triton_interpreted():
            import numpy
            import triton

            return _interpreter_defect(triton.__version__, numpy.__version__)
        return "no GPU (set TRITON_INTERPRET=1 before importing lmdeq to run interpreted)"
    return f"no Triton kernels for {device_type} tensors"


def _triton_interpreted() -> bool:
    """Whether the Triton kernels run (or, once imported, will run) in the interpreter."""
    kernels = sys.modules.get("lmdeq.kernels")
    if kernels is not None:
        return kernels.INTERPRETED
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_kernels() -> ModuleType:
    """``lmdeq.kernels``, imported on first use (so that TRITON_INTERPRET can be set before)."""
    return importlib.import_module("lmdeq.kernels")


def unavailable_reason(backend: str, device_type: str) -> Optional[str]:
    """Why ``backend`` cannot run ops on tensors of ``device_type`` ('cpu', 'cuda'); None if it can."""
    if backend == "torch":
        return None
    if backend == "triton":
        why = _triton_reason(device_type)
        return None if why is None else f"triton: {why}"
    if backend not in ("cuda", "cpu"):
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    ext, why = _load_extension()
    if ext is None:
        return f"{backend}: {why}"
    if backend == "cpu":
        return None if device_type == "cpu" else f"cpu: runs CPU tensors only, got {device_type} tensors"
    if not ext.with_cuda:
        cuda_reason = build_info().get("cuda_reason")
        return "cuda: extension built without CUDA" + (f" ({cuda_reason})" if cuda_reason else "")
    if device_type != "cuda":
        return "cuda: no CUDA device" if not torch.cuda.is_available() else (
            f"cuda: runs CUDA tensors only, got {device_type} tensors")
    return None


def requested() -> str:
    """The value of LMDEQ_BACKEND ('auto' when unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of auto, {', '.join(BACKENDS)}")
    return value


def choose(device: torch.device) -> str:
    """The backend that runs an op on tensors of ``device`` now (honours LMDEQ_BACKEND)."""
    device_type = torch.device(device).type
    want = requested()
    if want != "auto":
        why = unavailable_reason(want, device_type)
        if why is not None:
            raise RuntimeError(f"{ENV_VAR}={want} cannot run on {device_type} tensors: {why}")
        return want
    order = ("cuda", "triton", "torch") if device_type == "cuda" else ("cpu", "torch")
    for backend in order:
        if unavailable_reason(backend, device_type) is None:
            return backend
    return "torch"
