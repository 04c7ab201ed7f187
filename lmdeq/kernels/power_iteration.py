"""Triton kernels of batched power iteration on matrices W_l (rows_l x cols_l), all layers per launch.

    transposed:  t_l = W_l^T u_l                                   (program: layer, BLOCK_C columns)
    forward:     u_l = W_l t_l / max(||t_l||, eps)                 (program: layer, BLOCK_R rows)
    finalize:    out_l = u_l / max(||u_l||, eps),  sigma_l = ||u_l||^2 / max(||u_l||, eps)

2 launches per iteration + 1 for any number of layers, and one multi-tensor copy of the results. A
device table of per-layer weight pointers and sizes lets one launch address every layer's weight; it is
built once per (device, weight pointers, shapes) and kept on the device (a training loop passes the
same weights every step, so no host-to-device copy, and no host sync, after the first step; a new
table is copied from pinned memory without blocking). u is kept unnormalised between iterations
(v = t / ||t|| does not depend on u's scale). Vectors are fp32 (fp64 for fp64 weights); every
reduction has a fixed order. Offsets are int64 (a weight may hold 2^31 elements or more).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ..numerics import acc_dtype

from .dtypes import EPS, tl_acc, tl_dtype

FIELDS = 5  # per layer: weight pointer, rows, cols, offset in u_work, offset in t_work
_FIELDS = tl.constexpr(FIELDS)  # the same, readable inside the kernels
MAX_TABLES = 32  # device tables kept (least recently used dropped)
_TABLES: "OrderedDict[tuple, tuple]" = OrderedDict()
T_ROWS, T_COLS = 32, 64  # transposed kernel: column tile, rows per step
F_ROWS, F_COLS = 16, 128  # forward kernel: row tile, columns per step


@triton.jit
def _layer(layers, l, DTYPE: tl.constexpr):
    base = layers + l * _FIELDS
    w = tl.load(base).to(tl.pointer_type(DTYPE))
    return w, tl.load(base + 1), tl.load(base + 2), tl.load(base + 3), tl.load(base + 4)


@triton.jit
def _transposed_kernel(layers, tile_layer, tile_index, u_work, t_work, DTYPE: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0)
    l = tl.load(tile_layer + p)
    w, rows, cols, u_off, t_off = _layer(layers, l, DTYPE)
    c = tl.load(tile_index + p) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_C], ACC)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r[:, None] < rows) & (c[None, :] < cols)
        wt = tl.load(w + r.to(tl.int64)[:, None] * cols + c[None, :], mask=mask, other=0.0).to(ACC)
        u = tl.load(u_work + u_off + r, mask=r < rows, other=0.0)
        acc += tl.sum(wt * u[:, None], axis=0)
    tl.store(t_work + t_off + c, acc, mask=c < cols)


@triton.jit
def _forward_kernel(layers, tile_layer, tile_index, t_work, u_work, DTYPE: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0)
    l = tl.load(tile_layer + p)
    w, rows, cols, u_off, t_off = _layer(layers, l, DTYPE)
    sq = tl.zeros([BLOCK_C], ACC)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        t = tl.load(t_work + t_off + c, mask=c < cols, other=0.0)
        sq += t * t
    inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), EPS)
    r = tl.load(tile_index + p) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R], ACC)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (r[:, None] < rows) & (c[None, :] < cols)
        wt = tl.load(w + r.to(tl.int64)[:, None] * cols + c[None, :], mask=mask, other=0.0).to(ACC)
        t = tl.load(t_work + t_off + c, mask=c < cols, other=0.0)
        acc += tl.sum(wt * t[None, :], axis=1)
    tl.store(u_work + u_off + r, acc * inv, mask=r < rows)


@triton.jit
def _finalize_kernel(layers, u_work, out, sigmas, DTYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    l = tl.program_id(0)
    w, rows, cols, u_off, t_off = _layer(layers, l, DTYPE)
    sq = tl.zeros([BLOCK], ACC)
    for r0 in range(0, rows, BLOCK):
        r = r0 + tl.arange(0, BLOCK)
        u = tl.load(u_work + u_off + r, mask=r < rows, other=0.0)
        sq += u * u
    nrm = tl.sqrt(tl.sum(sq, axis=0))
    denom = tl.maximum(nrm, EPS)
    for r0 in range(0, rows, BLOCK):
        r = r0 + tl.arange(0, BLOCK)
        u = tl.load(u_work + u_off + r, mask=r < rows, other=0.0)
        tl.store(out + u_off + r, (u / denom).to(DTYPE), mask=r < rows)
    tl.store(sigmas + l, (nrm * nrm / denom).to(DTYPE))


def _layer_table(mats: List[torch.Tensor], device: torch.device) -> tuple:
    """(device table, transposed tiles, forward tiles) for these weights, from the cache or built now.

    The table holds per layer (weight pointer, rows, cols, u offset, t offset), then the (layer, tile)
    pairs of both kernels' programs; its content depends only on the pointers and shapes in the key."""
    key = (device, tuple((W.data_ptr(), W.shape[0], W.shape[1]) for W in mats))
    entry = _TABLES.get(key)
    if entry is not None:
        _TABLES.move_to_end(key)
        return entry
    layers, t_tiles, f_tiles = [], ([], []), ([], [])
    u_off = t_off = 0
    for l, W in enumerate(mats):
        rows, cols = W.shape
        layers += [W.data_ptr(), rows, cols, u_off, t_off]  # the FIELDS entries of layer l
        for tiles, n, size in ((t_tiles, cols, T_COLS), (f_tiles, rows, F_ROWS)):
            count = triton.cdiv(n, size)
            tiles[0].extend([l] * count)
            tiles[1].extend(range(count))
        u_off += rows
        t_off += cols
    host = torch.tensor(layers + t_tiles[0] + t_tiles[1] + f_tiles[0] + f_tiles[1], dtype=torch.int64)
    if device.type == "cuda":  # pinned: the copy neither blocks nor syncs (the host buffer is kept alive)
        table = host.pin_memory().to(device, non_blocking=True)
    else:
        table = host.to(device)
    entry = (table, len(t_tiles[0]), len(f_tiles[0]))
    _TABLES[key] = entry
    while len(_TABLES) > MAX_TABLES:
        _TABLES.popitem(last=False)
    return entry


def power_iteration_matrices(mats: List[torch.Tensor], us: List[torch.Tensor], n_iter: int
                             ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """mats: contiguous (rows_l, cols_l) of one dtype and device; us: contiguous (rows_l,); n_iter >= 1."""
    dtype, device = mats[0].dtype, mats[0].device
    L = len(mats)
    meta, n_t, n_f = _layer_table(mats, device)
    layer_tab = meta[:FIELDS * L]
    t_layer, t_index = meta[FIELDS * L:FIELDS * L + n_t], meta[FIELDS * L + n_t:FIELDS * L + 2 * n_t]
    rest = meta[FIELDS * L + 2 * n_t:]
    f_layer, f_index = rest[:n_f], rest[n_f:]
    rows = [W.shape[0] for W in mats]
    u_work = torch.cat(us).to(acc_dtype(dtype))
    t_work = torch.empty(sum(W.shape[1] for W in mats), dtype=u_work.dtype, device=device)
    out = torch.empty(sum(rows), dtype=dtype, device=device)
    sigmas = torch.empty(L, dtype=dtype, device=device)
    DTYPE, ACC = tl_dtype(dtype), tl_acc(dtype)
    for _ in range(n_iter):
        if n_t:
            _transposed_kernel[(n_t,)](layer_tab, t_layer, t_index, u_work, t_work, DTYPE=DTYPE, ACC=ACC,
                                       BLOCK_R=T_ROWS, BLOCK_C=T_COLS, num_warps=4)
        if n_f:
            _forward_kernel[(n_f,)](layer_tab, f_layer, f_index, t_work, u_work, DTYPE=DTYPE, ACC=ACC,
                                    BLOCK_R=F_ROWS, BLOCK_C=F_COLS, num_warps=4)
    _finalize_kernel[(L,)](layer_tab, u_work, out, sigmas, DTYPE=DTYPE, ACC=ACC, BLOCK=256, num_warps=4)
    new_us = [torch.empty_like(u) for u in us]  # separate outputs (no views of one buffer)
    torch._foreach_copy_(new_us, list(out.split(rows)))
    return sigmas, new_us
