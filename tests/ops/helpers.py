"""Shared pieces of the op tests: backends to test, per-dtype tolerances, relative errors, input makers."""
from __future__ import annotations

import contextlib
from typing import Iterable, List

import pytest
import torch

from lmdeq.ops import backends

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# Error floor per dtype; a kernel may also be off by up to 2x the error of the reference run in the
# same dtype (the reference rounds its outputs, and for matmuls its intermediates, to that dtype).
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def cpu_backends() -> List[str]:
    """Backends that can run on CPU tensors here (the C++ kernels, Triton interpreted, the reference)."""
    return [b for b in backends.BACKENDS if backends.unavailable_reason(b, "cpu") is None]


def backend_params(device: str = "cpu") -> list:
    """pytest params over every backend, unavailable ones skipped with their reason."""
    params = []
    for b in backends.BACKENDS:
        why = backends.unavailable_reason(b, device)
        marks = [pytest.mark.skip(reason=why)] if why else []
        params.append(pytest.param(b, marks=marks, id=b))
    return params


@contextlib.contextmanager
def poisoned_outputs():
    """New tensors start as NaN (deterministic mode's fill of uninitialised memory), so any output
    element a kernel fails to write shows up as NaN."""
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN in out gives NaN)."""
    out, ref = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def assert_close(out, ref64, ref_lowp=None, dtype=torch.float32, what: str = "output") -> None:
    """out within FLOOR[dtype] + 2 x (error of the same-dtype reference) of the float64 reference."""
    err = rel_err(out, ref64)
    tol = FLOOR[dtype] + (2.0 * rel_err(ref_lowp, ref64) if ref_lowp is not None else 0.0)
    assert err <= tol, f"{what}: relative error {err:.3e} > tolerance {tol:.3e} ({dtype})"


def assert_all_close(outs: Iterable, refs64: Iterable, refs_lowp: Iterable, dtype, what: str) -> None:
    for i, (o, r, rl) in enumerate(zip(outs, refs64, refs_lowp)):
        assert_close(o, r, rl, dtype, f"{what}[{i}]")


def randn(shape, dtype, seed: int, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def up(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)
