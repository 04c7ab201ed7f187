"""Conv power iteration with a Triton multi-tensor normalisation.

    v_l <- v_l / max(||v_l||, eps);  n_iter times: v_l <- A_l^T A_l v_l / max(||A_l^T A_l v_l||, eps)
    sigma_l = ||A_l v_l||,  A_l x = conv2d(x, W_l, stride_l, padding_l),  A_l^T = conv_transpose2d

The convolutions are PyTorch's (cuDNN on GPU). Each iteration gathers every layer's vector into one
flat buffer (one concatenation) and normalises all segments in one Triton launch, one program per
segment: sum of squares, then scaling, in a fixed order. Segment offset tables are cached per
(device, sizes), so that a CUDA-graph capture of the whole op (lmdeq.cuda_graphs) sees no host
to device copy after the first call; that copy is from pinned memory and does not block (the graph's
warm-up runs with host syncs as errors).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..numerics import acc_dtype, conv_output_size, conv_transpose_output_padding

from .dtypes import EPS, tl_acc

BLOCK = 1024
_offsets: Dict[tuple, torch.Tensor] = {}


@triton.jit
def _normalize_segments_kernel(x, offsets, norms, SCALE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    start = tl.load(offsets + s)
    end = tl.load(offsets + s + 1)
    sq = tl.zeros([BLOCK], ACC)
    for i0 in range(start, end, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        v = tl.load(x + i, mask=i < end, other=0.0).to(ACC)
        sq += v * v
    nrm = tl.sqrt(tl.sum(sq, axis=0))
    tl.store(norms + s, nrm)
    if SCALE:
        inv = 1.0 / tl.maximum(nrm, EPS)
        for i0 in range(start, end, BLOCK):
            i = i0 + tl.arange(0, BLOCK)
            v = tl.load(x + i, mask=i < end, other=0.0).to(ACC)
            tl.store(x + i, (v * inv).to(x.dtype.element_ty), mask=i < end)


def _segment_offsets(device: torch.device, sizes: Tuple[int, ...]) -> torch.Tensor:
    key = (device, sizes)
    if key not in _offsets:
        bounds = [0]
        for n in sizes:
            bounds.append(bounds[-1] + n)
        host = torch.tensor(bounds, dtype=torch.int64)
        _offsets[key] = host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host
    return _offsets[key]


def _normalized(tensors: Sequence[torch.Tensor], scale: bool) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(views of one flat buffer holding the tensors, scaled to unit norm if ``scale``; their norms)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    sizes = tuple(t.numel() for t in tensors)
    norms = torch.empty(len(tensors), dtype=acc_dtype(flat.dtype), device=flat.device)
    _normalize_segments_kernel[(len(tensors),)](flat, _segment_offsets(flat.device, sizes), norms, SCALE=scale,
                                                ACC=tl_acc(flat.dtype), BLOCK=BLOCK, num_warps=4)
    views = [seg.view(t.shape) for seg, t in zip(flat.split(sizes), tensors)]
    return views, norms


def conv_power_iteration(weights: List[torch.Tensor], vs: List[torch.Tensor], strides: List[int],
                         paddings: List[int], n_iter: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Arguments as lmdeq.ops.conv_power_iteration (validated there); returns fresh output tensors."""
    v, _ = _normalized(vs, scale=True)
    pads = []
    for W, x, s, p in zip(weights, vs, strides, paddings):
        out_hw = conv_output_size(x.shape[-2:], W.shape[-2:], s, p)
        pads.append(conv_transpose_output_padding(x.shape[-2:], out_hw, W.shape[-2:], s, p))
    for _ in range(n_iter):
        ws = [F.conv_transpose2d(F.conv2d(x, W, stride=s, padding=p), W, stride=s, padding=p, output_padding=op)
              for x, W, s, p, op in zip(v, weights, strides, paddings, pads)]
        v, _ = _normalized(ws, scale=True)
    us = [F.conv2d(x, W, stride=s, padding=p) for x, W, s, p in zip(v, weights, strides, paddings)]
    _, norms = _normalized(us, scale=False)
    outs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in v]
    torch._foreach_copy_(outs, v)
    return norms.to(weights[0].dtype), outs
