"""``python -m lmdeq.app.info`` / ``lmdeq info``: versions, the build of lmdeq._C, and which backend
runs each op (and why the others cannot)."""
from __future__ import annotations

import os
import platform
import sys
from typing import List, Optional

import torch

from .. import __version__, cuda_graphs
from ..ops import OP_NAMES, backends
from . import allocator
from .command import configure_or_exit


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    interp = "on" if backends.triton_interpreted() else "off"
    return f"{triton.__version__} (interpreter {interp})"


def _extension_lines() -> List[str]:
    ext = backends.extension()
    record = backends.build_info()
    if ext is None:
        why = backends.unavailable_reason("cpu", "cpu")
        return [f"extension lmdeq._C: unavailable -- {why.split(': ', 1)[1]}"]
    cuda = "CUDA kernels: no"
    if ext.with_cuda:
        v = ext.cuda_runtime_version
        cuda = f"CUDA kernels: yes (CUDA runtime {v // 1000}.{v % 1000 // 10}"
        if record.get("arch_list"):
            cuda += f", arch {record['arch_list']}"
        cuda += ")"
    elif record.get("cuda_reason"):
        cuda += f" ({record['cuda_reason']})"
    return [f"extension lmdeq._C: loaded from {ext.__file__}",
            f"  compiled against torch {ext.torch_version} with {ext.compiler}; {cuda}"]


def _graphs_state() -> str:
    why = cuda_graphs.disabled_reason()
    return "on" if why is None else ("off" if why == "LMDEQ_CUDA_GRAPHS=0" else f"off in this process: {why}")


def _devices() -> List[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _selected(device: str) -> str:
    try:
        return backends.choose(torch.device(device))
    except (RuntimeError, ValueError) as exc:
        return f"error: {exc}"


def report() -> str:
    """The text :func:`main` prints."""
    cuda_build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        f"lmdeq {__version__}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__} ({cuda_build}; GPU: {gpu})",
        f"triton {_triton_version()}",
        *_extension_lines(),
        f"{backends.ENV_VAR}={os.environ.get(backends.ENV_VAR, 'auto')}",
        f"LMDEQ_CUDA_GRAPHS={os.environ.get('LMDEQ_CUDA_GRAPHS', '1')} (CUDA-graphed fixed-count solves and conv power "
        f"iteration: {_graphs_state()}{'' if torch.cuda.is_available() else ', used on CUDA devices only'})",
        allocator.describe(),
        "",
    ]
    for device in _devices():
        available = [b for b in backends.BACKENDS if backends.unavailable_reason(b, device) is None]
        lines.append(f"backends for {device} tensors (every op): {', '.join(available)}")
        for b in backends.BACKENDS:
            why = backends.unavailable_reason(b, device)
            if why is not None:
                lines.append(f"  unavailable {why}")
    lines.append("")
    width = max(len(n) for n in OP_NAMES)
    lines.append(f"{'op'.ljust(width)}  " + "  ".join(f"selected ({d})" for d in _devices()))
    selected = {d: _selected(d) for d in _devices()}
    for name in OP_NAMES:
        lines.append(f"{name.ljust(width)}  " + "  ".join(selected[d].ljust(len(f'selected ({d})'))
                                                          for d in _devices()))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    configure_or_exit("lmdeq info")   # report what lmdeq's own processes run with
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
