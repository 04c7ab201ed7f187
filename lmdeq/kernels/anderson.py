"""Triton kernels of the Anderson history work over X, F (B, m, n) with unit stride along n.

    anderson_gram_row:  H[b, j] = <G_k, G_j>, G_j = F[b, j] - X[b, j]              (B, m)
    anderson_mix:       x[b] = sum_j alpha[b, j] ((1 - tau) X[b, j] + tau F[b, j])     (B, n)

Each program loads a [M_PAD, BLOCK_N] tile of both buffers (all m history rows of one chunk of one
sample), so every history buffer is read once. The Gram row keeps per-(sample, chunk) partials that a
second kernel adds in chunk order (deterministic). Offsets are int64 (a history row may start 2^31
elements or more into its sample: j * sxm with a strided view); the chunks of n are the grid's second
axis, at most 65,535 (``MAX_GRID_Y``; the CUDA kernels check the same).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..numerics import acc_dtype

from .dtypes import split_float, tl_acc

TILE = 8192  # elements per [M_PAD, BLOCK_N] tile
MAX_GRID_Y = 65535  # CUDA's limit on a grid's second axis


def _blocks(m: int):
    m_pad = triton.next_power_of_2(max(m, 1))
    return m_pad, max(32, TILE // m_pad)


def _check_chunks(op: str, n: int, chunks: int) -> None:
    if chunks > MAX_GRID_Y:
        raise ValueError(f"lmdeq.ops.{op}: a history row of n = {n} elements is too large for the Triton kernel "
                         f"({chunks} chunks > {MAX_GRID_Y}, the grid limit)")


@triton.jit
def _gram_partial_kernel(X, F, sxb, sxm, sfb, sfm, m, n, k, chunks, part, ACC: tl.constexpr, M_PAD: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    j = tl.arange(0, M_PAD)
    jl = j.to(tl.int64)[:, None]
    i = c * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (j[:, None] < m) & (i[None, :] < n)
    x = tl.load(X + b * sxb + jl * sxm + i[None, :], mask=mask, other=0.0).to(ACC)
    f = tl.load(F + b * sfb + jl * sfm + i[None, :], mask=mask, other=0.0).to(ACC)
    g = f - x
    gk = tl.sum(tl.where(j[:, None] == k, g, 0.0), axis=0)
    row = tl.sum(g * gk[None, :], axis=1)
    tl.store(part + (b * chunks + c) * m + j, row, mask=j < m)


@triton.jit
def _gram_finalize_kernel(part, m, chunks, out, ACC: tl.constexpr, M_PAD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, M_PAD)
    acc = tl.zeros([M_PAD], ACC)
    for c in range(0, chunks):
        acc += tl.load(part + (b * chunks + c) * m + j, mask=j < m, other=0.0)
    tl.store(out + b * m + j, acc, mask=j < m)


@triton.jit
def _mix_kernel(X, F, sxb, sxm, sfb, sfm, m, n, alpha, keep_hi, keep_lo, tau_hi, tau_lo, out, ACC: tl.constexpr,
                M_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    keep = tl.cast(keep_hi, ACC) + tl.cast(keep_lo, ACC)
    tau = tl.cast(tau_hi, ACC) + tl.cast(tau_lo, ACC)
    j = tl.arange(0, M_PAD)
    jl = j.to(tl.int64)[:, None]
    i = c * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (j[:, None] < m) & (i[None, :] < n)
    x = tl.load(X + b * sxb + jl * sxm + i[None, :], mask=mask, other=0.0).to(ACC)
    f = tl.load(F + b * sfb + jl * sfm + i[None, :], mask=mask, other=0.0).to(ACC)
    a = tl.load(alpha + b * m + j, mask=j < m, other=0.0)
    mixed = tl.sum((a * keep)[:, None] * x + (a * tau)[:, None] * f, axis=0)
    tl.store(out + b * n + i, mixed.to(out.dtype.element_ty), mask=i < n)


def anderson_gram_row(X: torch.Tensor, F: torch.Tensor, k: int) -> torch.Tensor:
    """H (B, m) in the accumulation dtype; X, F (B, m, n) with unit stride along n."""
    B, m, n = X.shape
    out = torch.empty(B, m, dtype=acc_dtype(X.dtype), device=X.device)
    M_PAD, BLOCK_N = _blocks(m)
    chunks = triton.cdiv(n, BLOCK_N)
    _check_chunks("anderson_gram_row", n, chunks)
    if B == 0:
        return out
    if chunks == 0:
        return out.zero_()
    part = torch.empty(B, chunks, m, dtype=out.dtype, device=X.device)
    ACC = tl_acc(X.dtype)
    _gram_partial_kernel[(B, chunks)](X, F, X.stride(0), X.stride(1), F.stride(0), F.stride(1), m, n, k, chunks, part,
                                      ACC=ACC, M_PAD=M_PAD, BLOCK_N=BLOCK_N, num_warps=8)
    _gram_finalize_kernel[(B,)](part, m, chunks, out, ACC=ACC, M_PAD=M_PAD, num_warps=1)
    return out


def anderson_mix(X: torch.Tensor, F: torch.Tensor, alpha: torch.Tensor, tau: float) -> torch.Tensor:
    """x (B, n) in X's dtype; X, F (B, m, n) with unit stride along n, alpha (B, m)."""
    B, m, n = X.shape
    out = torch.empty(B, n, dtype=X.dtype, device=X.device)
    M_PAD, BLOCK_N = _blocks(m)
    chunks = triton.cdiv(n, BLOCK_N)
    _check_chunks("anderson_mix", n, chunks)
    if B == 0 or chunks == 0:
        return out
    alpha = alpha.to(acc_dtype(X.dtype)).contiguous()
    _mix_kernel[(B, chunks)](X, F, X.stride(0), X.stride(1), F.stride(0), F.stride(1), m, n, alpha,
                             *split_float(1.0 - tau), *split_float(tau), out, ACC=tl_acc(X.dtype), M_PAD=M_PAD,
                             BLOCK_N=BLOCK_N, num_warps=8)
    return out
