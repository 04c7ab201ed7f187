"""Test configuration. The Triton interpreter must be switched on before any Triton kernel module is
imported, so this happens first, and only where no CUDA device exists."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# The CPU code-path check's recorder (active only with LMDEQ_TEST_OUTCOMES set; scripts/cpu_paths.py).
from .cpu_paths import pytest_configure, pytest_runtest_logreport  # noqa: E402,F401

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where no CUDA device exists (scripts/gpu_check.sh runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
