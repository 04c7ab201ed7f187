"""Build script for lmdeq.

One extension, ``lmdeq._C``, is compiled from ``csrc/``:

* the C++ CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) whenever torch is importable at build time;
* the CUDA kernels (``csrc/cuda/*.cu``) when a CUDA toolkit (``nvcc``) is present *and* the installed
  torch is a CUDA build. The decision is made from the toolchain, never from
  ``torch.cuda.is_available()``, so a CPU-only build machine still compiles (and checks) the CUDA code.

Honoured environment variables: ``CUDA_HOME`` / ``CUDA_PATH`` (default: the toolkit of the ``nvcc`` on
PATH, else /usr/local/cuda; a directory counts when it holds bin/nvcc), ``TORCH_CUDA_ARCH_LIST``
(default: the compute capabilities of the visible GPUs, the highest also as PTX; with no GPU visible
"9.0+PTX": Hopper machine code, plus PTX that the driver compiles for newer GPUs), ``MAX_JOBS``
(parallel compile jobs, read by torch's BuildExtension), ``LMDEQ_BUILD_EXT=0`` (skip the extension),
``LMDEQ_BUILD_CUDA=0`` (CPU kernels only). The arch list is recorded in lmdeq/_build_info.json, and at
run time lmdeq uses the CUDA kernels only on GPUs that list covers (lmdeq.ops.backends.arch_runs_on).

Without torch at build time (e.g. an isolated ``pip install .``) the result is a pure-Python
install: every op then runs on its Triton or plain-PyTorch backend.
"""
import glob
import json
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(ROOT, "lmdeq", "_build_info.json")
DEFAULT_ARCH_LIST = "9.0+PTX"


def _find_cuda_home():
    """The CUDA toolkit to compile with: CUDA_HOME, CUDA_PATH, the toolkit of the nvcc on PATH, or
    /usr/local/cuda, whichever first holds bin/nvcc; None without a toolkit."""
    nvcc = shutil.which("nvcc")
    on_path = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), on_path, "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


def _default_arch_list(torch):
    """TORCH_CUDA_ARCH_LIST when none is set: the visible GPUs' compute capabilities (the highest also
    as PTX, for newer GPUs), or DEFAULT_ARCH_LIST without a visible GPU. Returns (list, where from)."""
    try:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except (RuntimeError, AssertionError):
        caps = []
    if not caps:
        return DEFAULT_ARCH_LIST, "default (no GPU visible)"
    names = [f"{major}.{minor}" for major, minor in caps]
    names[-1] += "+PTX"
    return ";".join(names), "the visible GPUs"


def _extensions():
    if os.environ.get("LMDEQ_BUILD_EXT", "1") == "0":
        return [], {}, {"extension": False, "reason": "LMDEQ_BUILD_EXT=0"}
    try:
        import torch
    except ImportError:
        return [], {}, {"extension": False, "reason": "torch was not importable at build time"}

    cuda_home = _find_cuda_home()
    want_cuda = os.environ.get("LMDEQ_BUILD_CUDA", "1") != "0"
    with_cuda = bool(want_cuda and cuda_home and torch.version.cuda)
    arch_source = None
    if with_cuda:
        # cpp_extension reads CUDA_HOME when it is imported; set it first so its guess cannot win.
        os.environ["CUDA_HOME"] = cuda_home
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            arch_source = "TORCH_CUDA_ARCH_LIST"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"], arch_source = _default_arch_list(torch)
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++17 up to torch 2.9,
    # C++20 after), and nvcc rejects a second -std.
    cxx_flags = ["-O3", "-fopenmp"]
    macros = []
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        macros.append(("LMDEQ_WITH_CUDA", None))
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx_flags + ["-DLMDEQ_WITH_CUDA"], "nvcc": ["-O3", "-DLMDEQ_WITH_CUDA"]}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx_flags}
    if not sources:
        return [], {}, {"extension": False, "reason": "no C++ sources under csrc/"}
    ext = ext_cls("lmdeq._C", sources, extra_compile_args=extra, define_macros=macros,
                  extra_link_args=["-fopenmp"])
    if with_cuda:
        cuda_reason = None
    elif not want_cuda:
        cuda_reason = "LMDEQ_BUILD_CUDA=0"
    elif not cuda_home:
        cuda_reason = "no CUDA toolkit (nvcc) found at build time"
    else:
        cuda_reason = "torch %s is not a CUDA build" % torch.__version__
    info = {
        "extension": True,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_reason": cuda_reason,
        "cuda_home": cuda_home if with_cuda else None,
        "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "arch_source": arch_source,
    }
    return [ext], {"build_ext": cpp_extension.BuildExtension}, info


if __name__ == "__main__":  # (also under pip: setuptools runs this file as __main__)
    ext_modules, cmdclass, build_info = _extensions()
    with open(BUILD_INFO, "w") as fh:
        json.dump(build_info, fh, indent=1)
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
