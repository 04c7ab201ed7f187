"""Triton kernel of the fused fixed-point update over a list state (one tensor is a list of one).

    z_next = (1 - tau) z + tau fz,   res[b]^2 = sum_i ||fz_i,b - z_i,b||^2,   fzn[b]^2 = sum_i ||fz_i,b||^2

Pass 1, grid (B, chunks): each program takes CHUNK elements of one sample of one tensor, reads z
and fz once, writes z_next once and stores two partial sums (fp32; fp64 for fp64). Up to SLOTS
tensors share one launch (their pointers are kernel arguments; a longer list takes more launches).
Pass 2, grid (B,): each program adds its sample's partials in a fixed order and takes square roots.
Deterministic, no atomics. Storage may be bf16/fp16: values are cast to the accumulation dtype right
after loading (the interpreter has no bf16 arithmetic). A launch's chunks are the grid's second axis,
at most 65,535 (``MAX_GRID_Y``): a sample of up to 4 tensors of about 268 million elements in all.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ..numerics import acc_dtype

from .dtypes import split_float, tl_acc

SLOTS = 4
BLOCK = 1024
ITERS = 4
CHUNK = BLOCK * ITERS
BLOCK_P = 128
MAX_GRID_Y = 65535  # CUDA's limit on a grid's second axis


@triton.jit
def _update_chunk(z_ptr, f_ptr, o_ptr, n, chunk, row, part_r, part_f, part_idx, keep, tau, ACC: tl.constexpr,
                  BLOCK: tl.constexpr, ITERS: tl.constexpr):
    start = chunk.to(tl.int64) * (BLOCK * ITERS)
    base = row.to(tl.int64) * n + start
    limit = n - start
    offs = tl.arange(0, BLOCK)
    r2 = tl.zeros([BLOCK], ACC)
    f2 = tl.zeros([BLOCK], ACC)
    for it in tl.static_range(ITERS):
        o = it * BLOCK + offs
        mask = o < limit
        z = tl.load(z_ptr + base + o, mask=mask, other=0.0).to(ACC)
        f = tl.load(f_ptr + base + o, mask=mask, other=0.0).to(ACC)
        tl.store(o_ptr + base + o, (keep * z + tau * f).to(o_ptr.dtype.element_ty), mask=mask)
        d = f - z
        r2 += d * d
        f2 += f * f
    tl.store(part_r + part_idx, tl.sum(r2, axis=0))
    tl.store(part_f + part_idx, tl.sum(f2, axis=0))


@triton.jit
def _update_kernel(z0, f0, o0, n0, z1, f1, o1, n1, z2, f2, o2, n2, z3, f3, o3, n3, c1, c2, c3,
                   part_r, part_f, cols, col_offset, keep_hi, keep_lo, tau_hi, tau_lo,
                   USED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    keep = tl.cast(keep_hi, ACC) + tl.cast(keep_lo, ACC)
    tau = tl.cast(tau_hi, ACC) + tl.cast(tau_lo, ACC)
    row = tl.program_id(0)
    col = tl.program_id(1)
    idx = row.to(tl.int64) * cols + col_offset + col
    if col < c1:
        _update_chunk(z0, f0, o0, n0, col, row, part_r, part_f, idx, keep, tau, ACC, BLOCK, ITERS)
    if USED > 1:
        if (col >= c1) & (col < c2):
            _update_chunk(z1, f1, o1, n1, col - c1, row, part_r, part_f, idx, keep, tau, ACC, BLOCK, ITERS)
    if USED > 2:
        if (col >= c2) & (col < c3):
            _update_chunk(z2, f2, o2, n2, col - c2, row, part_r, part_f, idx, keep, tau, ACC, BLOCK, ITERS)
    if USED > 3:
        if col >= c3:
            _update_chunk(z3, f3, o3, n3, col - c3, row, part_r, part_f, idx, keep, tau, ACC, BLOCK, ITERS)


@triton.jit
def _finalize_kernel(part_r, part_f, cols, res, fzn, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_P)
    r2 = tl.zeros([BLOCK_P], ACC)
    f2 = tl.zeros([BLOCK_P], ACC)
    for c0 in range(0, cols, BLOCK_P):
        mask = c0 + offs < cols
        r2 += tl.load(part_r + row.to(tl.int64) * cols + c0 + offs, mask=mask, other=0.0)
        f2 += tl.load(part_f + row.to(tl.int64) * cols + c0 + offs, mask=mask, other=0.0)
    tl.store(res + row, tl.sqrt(tl.sum(r2, axis=0)))
    tl.store(fzn + row, tl.sqrt(tl.sum(f2, axis=0)))


def fixed_point_update_multi(zs: List[torch.Tensor], fzs: List[torch.Tensor], tau: float
                             ) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Launch the update; each (z, fz) pair must already be laid out as sample rows (lmdeq.ops.layout)."""
    B = zs[0].shape[0]
    dtype, device = zs[0].dtype, zs[0].device
    acc = acc_dtype(dtype)
    outs = [torch.empty_like(z) for z in zs]
    ns = [z.numel() // B if B else 0 for z in zs]
    chunks = [triton.cdiv(n, CHUNK) for n in ns]
    cols = sum(chunks)
    for s0 in range(0, len(zs), SLOTS):  # each launch's chunks are its grid's second axis
        if sum(chunks[s0:s0 + SLOTS]) > MAX_GRID_Y:
            raise ValueError(f"lmdeq.ops.fixed_point_update_multi: {sum(ns[s0:s0 + SLOTS])} elements per sample in "
                             f"one launch ({sum(chunks[s0:s0 + SLOTS])} chunks) exceed the Triton kernel's grid limit "
                             f"of {MAX_GRID_Y} chunks")
    res = torch.empty(B, dtype=acc, device=device)
    fzn = torch.empty(B, dtype=acc, device=device)
    if B == 0:
        return outs, res, fzn
    if cols == 0:
        return outs, res.zero_(), fzn.zero_()
    part_r = torch.empty(B, cols, dtype=acc, device=device)
    part_f = torch.empty(B, cols, dtype=acc, device=device)
    ACC = tl_acc(dtype)
    col_offset = 0
    for s0 in range(0, len(zs), SLOTS):
        group = list(range(s0, min(s0 + SLOTS, len(zs))))
        args, starts = [], [0]
        for i in range(SLOTS):
            t = group[min(i, len(group) - 1)]  # unused slots repeat the last tensor (never touched)
            args += [zs[t], fzs[t], outs[t], ns[t]]
            if i < len(group):
                starts.append(starts[-1] + chunks[t])
        launch_cols = starts[len(group)]
        starts += [starts[-1]] * (SLOTS + 1 - len(starts))
        if launch_cols:
            _update_kernel[(B, launch_cols)](*args, starts[1], starts[2], starts[3], part_r, part_f, cols, col_offset,
                                             *split_float(1.0 - tau), *split_float(tau), USED=len(group), ACC=ACC,
                                             BLOCK=BLOCK, ITERS=ITERS, num_warps=4)
        col_offset += launch_cols
    _finalize_kernel[(B,)](part_r, part_f, cols, res, fzn, ACC=ACC, BLOCK_P=BLOCK_P, num_warps=1)
    return outs, res, fzn
