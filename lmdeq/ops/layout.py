"""Memory layouts the fused kernels accept, decided identically for real and fake (traced) calls.

A pair (z, fz) of equal shape (B, ...) is processed as B rows of n = numel / B elements: sample b
must occupy elements [b n, (b + 1) n) of both buffers. Dense tensors with equal strides whose batch
dimension is outermost (contiguous, channels_last, ...) qualify as they are; anything else is copied
to contiguous first. Outputs take z's layout (``torch.empty_like``).
"""
from __future__ import annotations

from typing import Tuple

import torch


def is_dense(t: torch.Tensor) -> bool:
    """True when t's elements fill a contiguous block of memory without overlap (any dim order)."""
    dims = sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=lambda d: t.stride(d))
    expected = 1
    for d in dims:
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def rows_in_place(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether (a, b) can be processed as sample rows without a copy."""
    if a.numel() == 0 or a.stride() != b.stride() or not is_dense(a):
        return False
    return a.shape[0] == 1 or a.stride(0) == a.numel() // a.shape[0]


def sample_rows(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, b) unchanged when they can be processed in place, else contiguous copies."""
    if rows_in_place(a, b):
        return a, b
    return a.contiguous(), b.contiguous()


def unit_inner_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension has unit stride (history buffers), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def with_layout_of(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` with the strides of ``like`` (a dense or contiguous tensor), copied only if they differ.

    For such a ``like`` these are the strides of ``torch.empty_like(like)``, which the fake
    implementations return."""
    if out.stride() == like.stride():
        return out
    return torch.empty_like(like).copy_(out)
