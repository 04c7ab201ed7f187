"""Which implementation runs an op, decided at call time.

Backends, best first:

* ``cuda``   -- the CUDA kernels of the compiled extension ``lmdeq._C`` (CUDA tensors);
* ``triton`` -- the Triton kernels of ``lmdeq.kernels`` (CUDA tensors; CPU tensors only under the
  Triton interpreter, ``TRITON_INTERPRET=1`` set before the kernels are imported);
* ``cpu``    -- the C++ CPU kernels of ``lmdeq._C`` (CPU tensors);
* ``torch``  -- the plain-PyTorch reference ``lmdeq.ops.reference`` (any device, always there).

``LMDEQ_BACKEND=auto`` (default) picks cuda > triton for CUDA tensors and cpu > torch for CPU
tensors; ``LMDEQ_BACKEND=cuda|triton|cpu|torch`` forces one, and a forced backend that cannot run
raises RuntimeError saying why. When ``auto`` passes over a backend it says why, in one warning per
device type (and ``lmdeq info`` lists every reason). The reasons checked:

* the extension is checked against the running torch on load (the version it was compiled for is
  baked into the binary); a build that fails to import says so, with the import error;
* the CUDA kernels must have been built for the running GPU: the arch list of the build
  (``TORCH_CUDA_ARCH_LIST``, recorded in lmdeq/_build_info.json) is checked against the device's
  compute capability (:func:`arch_runs_on`), so an sm_90 build on an A100 falls back to Triton
  instead of failing with "no kernel image is available".

Triton launches go to the current device's stream, so :func:`run_triton` launches under
``torch.cuda.device`` of the tensors' device.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple, Union

import torch

from ..errors import BackendError, ConfigError

__all__ = ["BACKENDS", "ENV_VAR", "choose", "extension", "build_info", "requested", "unavailable_reason",
           "triton_kernels", "triton_interpreted", "run_triton", "device_guard", "arch_runs_on"]

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
        return None, (f"extension lmdeq._C was built for torch {built_for} but torch {torch.__version__} is "
                      f"running; {_REBUILD}")
    try:
        ext = importlib.import_module("lmdeq._C")
    except ImportError as exc:
        if info.get("extension") is False:
            return None, f"extension lmdeq._C not built ({info.get('reason')})"
        if info.get("extension"):
            return None, f"extension lmdeq._C was built but fails to import ({exc}); {_REBUILD}"
        return None, f"extension lmdeq._C not built ({exc})"
    if _release(ext.torch_version) != _release(torch.__version__):
        return None, (f"extension lmdeq._C was compiled against torch {ext.torch_version} but torch "
                      f"{torch.__version__} is running; {_REBUILD}")
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
        if triton_interpreted():
            import numpy
            import triton

            return _interpreter_defect(triton.__version__, numpy.__version__)
        return "no GPU (set TRITON_INTERPRET=1 before importing lmdeq to run interpreted)"
    return f"no Triton kernels for {device_type} tensors"


def triton_interpreted() -> bool:
    """Whether the Triton kernels run (or, once imported, will run) in the interpreter."""
    kernels = sys.modules.get("lmdeq.kernels")
    if kernels is not None:
        return kernels.INTERPRETED
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_kernels() -> ModuleType:
    """``lmdeq.kernels``, imported on first use (so that TRITON_INTERPRET can be set before)."""
    return importlib.import_module("lmdeq.kernels")


def device_guard(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device (a launch that reads the current device, as
    Triton's does, then targets the tensors' device and its current stream); a no-op otherwise."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def run_triton(name: str, device: torch.device, *args):
    """``lmdeq.kernels.<name>(*args)`` launched on ``device`` (the tensors' device)."""
    with device_guard(device):
        return getattr(triton_kernels(), name)(*args)


# Named entries of TORCH_CUDA_ARCH_LIST, as torch.utils.cpp_extension expands them.
_NAMED_ARCHES = {"Kepler+Tesla": "3.7", "Kepler": "3.5+PTX", "Maxwell+Tegra": "5.3", "Maxwell": "5.0;5.2+PTX",
                 "Pascal": "6.0;6.1+PTX", "Volta+Tegra": "7.2", "Volta": "7.0+PTX", "Turing": "7.5+PTX",
                 "Ampere+Tegra": "8.7", "Ampere": "8.0;8.6+PTX", "Ada": "8.9+PTX", "Hopper": "9.0+PTX",
                 "Blackwell+Tegra": "11.0", "Blackwell": "10.0;10.3;12.0;12.1+PTX"}


def _arch_entries(arch_list: str) -> List[Tuple[int, int, str, bool]]:
    """'8.0;8.6+PTX 9.0a' -> [(8, 0, '', False), (8, 6, '', True), (9, 0, 'a', False)]: (major, minor,
    suffix, with PTX). Raises ValueError for an entry it cannot read."""
    entries = []
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        if item in _NAMED_ARCHES:
            entries += _arch_entries(_NAMED_ARCHES[item])
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", item)
        if match is None:
            raise ValueError(f"cannot read {item!r} in the arch list {arch_list!r}")
        entries.append((int(match[1]), int(match[2]), match[3], match[4] is not None))
    return entries


def arch_runs_on(arch_list: str, capability: Tuple[int, int]) -> bool:
    """Whether CUDA code built for ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax) runs on a device of compute
    capability ``capability``. Machine code for X.Y runs on X.Y' with Y' >= Y (same major; an arch-specific
    'a' build only on X.Y itself); PTX (``+PTX``) is compiled by the driver for any capability >= X.Y
    ('a' PTX again only for X.Y; family 'f' code within major X)."""
    major, minor = capability
    for a_major, a_minor, suffix, ptx in _arch_entries(arch_list):
        if suffix == "a":
            if (a_major, a_minor) == (major, minor):
                return True
        elif a_major == major and a_minor <= minor:
            return True
        elif ptx and not suffix and (a_major, a_minor) <= (major, minor):
            return True
    return False


@functools.lru_cache(maxsize=None)
def _arch_reason(index: int) -> Optional[str]:
    """Why lmdeq._C's CUDA kernels cannot run on CUDA device ``index``, or None (also when the build did not
    record its arch list, or recorded one that cannot be read: then the kernels are tried)."""
    arch = build_info().get("arch_list")
    if not arch:
        return None
    capability = tuple(torch.cuda.get_device_capability(index))
    try:
        if arch_runs_on(arch, capability):
            return None
    except ValueError:
        return None
    cc = f"{capability[0]}.{capability[1]}"
    return (f"cuda: lmdeq._C's CUDA kernels were built for TORCH_CUDA_ARCH_LIST={arch}, which does not run on "
            f"{torch.cuda.get_device_name(index)} (compute capability {cc}); rebuild with "
            f"TORCH_CUDA_ARCH_LIST={cc}: {_REBUILD}")


def unavailable_reason(backend: str, device: Union[str, torch.device]) -> Optional[str]:
    """Why ``backend`` cannot run ops on tensors of ``device`` (a device or a device type: 'cpu', 'cuda',
    'cuda:1'); None if it can. For 'cuda' without an index, the current CUDA device is checked."""
    device = torch.device(device)
    device_type = device.type
    if backend == "torch":
        return None
    if backend == "triton":
        why = _triton_reason(device_type)
        return None if why is None else f"triton: {why}"
    if backend not in ("cuda", "cpu"):
        raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
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
    if not torch.cuda.is_available():
        return "cuda: no CUDA device"
    return _arch_reason(device.index if device.index is not None else torch.cuda.current_device())


def requested() -> str:
    """The value of LMDEQ_BACKEND ('auto' when unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ConfigError(f"{ENV_VAR}={value!r} is not one of auto, {', '.join(BACKENDS)}")
    return value


_passed_over: set = set()  # (device type, backend, reason) already warned about


def _say_why_not(device_type: str, skipped: List[Tuple[str, str]], chosen: str) -> None:
    new = [(b, why) for b, why in skipped if (device_type, b, why) not in _passed_over]
    if not new:
        return
    _passed_over.update((device_type, b, why) for b, why in new)
    reasons = "; ".join(why for _, why in new)
    warnings.warn(f"lmdeq: ops on {device_type} tensors run on the {chosen} backend, not "
                  f"{' or '.join(b for b, _ in new)} ({reasons}); `lmdeq info` lists the backends",
                  RuntimeWarning, stacklevel=4)


def choose(device: torch.device) -> str:
    """The backend that runs an op on tensors of ``device`` now (honours LMDEQ_BACKEND)."""
    device = torch.device(device)
    want = requested()
    if want != "auto":
        why = unavailable_reason(want, device)
        if why is not None:
            raise BackendError(f"{ENV_VAR}={want} cannot run on {device.type} tensors: {why}")
        return want
    order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
    skipped = []
    for backend in order:
        why = unavailable_reason(backend, device)
        if why is None:
            if skipped:
                _say_why_not(device.type, skipped, backend)
            return backend
        skipped.append((backend, why))
    raise AssertionError("the torch backend is always available")
