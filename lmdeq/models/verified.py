"""Verified operator norms: upper bounds on ||A_W||_2 that rest on no estimate, and :func:`verified_lipschitz_bound`,
the certified bound of a module with every capped layer's bound replaced by one.

A capped layer's own bound, min(cap, (1 + margin) sigma_hat) (capped.py), assumes that power iteration came within
the margin of the true norm. This module removes the assumption. For a convolution
y = conv2d(x, W, stride s, padding p) on inputs of size H x W (zero padding):

1. *Polyphase split.* Write every input index t = s m + r with phase r in [0, s) per axis. A tap u of the kernel
   reads x[s i + u - p] = x_r[i + q] with r = (u - p) mod s and q = (u - p - r) / s, where x_r[m] = x[s m + r]. So
   y = sum_r corr(x_r, K_r): a stride-1 correlation of the s^2 C_in phase channels with the phase kernel K (taps
   q in [q_min, q_max]). Splitting x into its phases only reorders its entries (an isometry).
2. *Circulant embedding.* Extend every phase image by zeros to an N x N' grid with N >= max(H_r - q_min,
   H_o + q_max) (H_r the largest phase size, H_o the output size) and correlate circularly: an output index in
   [0, H_o) reads either a data entry at its own place or one of the added zeros, never a wrapped data entry.
   So A_W = R C E with E the zero extension (an isometry), R the restriction to the H_o x W_o outputs (norm 1)
   and C the block-circulant correlation. Hence ||A_W|| <= ||C||.
3. *Exact norm of C.* The 2-D DFT diagonalises C by blocks: ||C|| = max over the N N' frequencies w of
   sigma_max(K^(w)), K^(w) the C_out x s^2 C_in matrix of the phase kernel's Fourier coefficients (half the
   frequencies of the width suffice: a real kernel's coefficients at -w are the conjugates of those at w, with the
   same singular values).

The bound is exact for a 1 x 1 convolution (K^ is W at every frequency) and tight within a few percent for a
3 x 3 kernel on images of 16 pixels and more (the circulant and the zero-padded operators differ only at the
border). Where the circulant's slack is largest, small inputs (C_in H W <= 1024 entries), the dense matrix of the
map is built instead and its exact norm taken (``dense_max``). A linear layer's norm is the
largest singular value of its matrix. All of it runs in float64 and is multiplied by (1 + 1e-9), which covers the
rounding of the FFT and the SVD (both backward stable: relative errors of a few eps times the dimension).

:func:`verified_lipschitz_bound` composes these through the same exact rules as :func:`lipschitz_bound` (the
layerwise rules: a composed estimate, bound='composed', is a power-iteration estimate too, so it is not used).
With the layerwise bound (the default), verified <= certified whenever every estimate was within its margin, so
comparing the two shows whether the margin assumption held for the current weights; a composed bound can be
below the verified (layerwise) one without any estimate falling short.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import checks
from .capped import CappedConv2d, CappedLinear, NormCapped
from .constraints import capped_layers
from .lipschitz import lipschitz_bound

__all__ = ["conv2d_norm_upper_bound", "linear_norm_exact", "verified_norm", "verified_lipschitz_bound"]

_ROUNDING = 1.0 + 1e-9
_BLOCK_ENTRIES = 2 ** 22   # complex coefficients per block of frequencies (64 MiB)


def _phase_kernel(weight: torch.Tensor, stride: int, padding: int):
    """(kernel, (q_min_h, q_min_w)): the stride-1 kernel of the polyphase split (module docstring, step 1), shape
    (C_out, s^2 C_in, Q_h, Q_w), its tap q at index q - q_min."""
    c_out, c_in, kh, kw = weight.shape

    def taps(k):
        r = [(u - padding) % stride for u in range(k)]
        q = [(u - padding - r_u) // stride for u, r_u in zip(range(k), r)]
        return r, q, min(q), max(q) - min(q) + 1

    rh, qh, qh0, nqh = taps(kh)
    rw, qw, qw0, nqw = taps(kw)
    out = weight.new_zeros(c_out, stride, stride, c_in, nqh, nqw)
    for u in range(kh):
        for v in range(kw):
            out[:, rh[u], rw[v], :, qh[u] - qh0, qw[v] - qw0] = weight[:, :, u, v]
    return out.reshape(c_out, stride * stride * c_in, nqh, nqw), (qh0, qw0)


def _grid(phase_size: int, q_min: int, taps: int, out_size: int) -> int:
    """The circulant period N along one axis (step 2): output i + tap q must land on a data entry or an added zero,
    never on a data entry by wrapping around: N >= phase_size - q_min (reads left of 0) and N >= out_size + q_max
    (reads right of the data); N >= the tap count so the FFT keeps every tap."""
    return max(phase_size - q_min, out_size + q_min + taps - 1, taps)


def conv2d_norm_upper_bound(weight: torch.Tensor, input_size: Sequence[int], stride: int = 1,
                            padding: int = 0, *, dense_max: int = 1024) -> float:
    """An upper bound on the l2 operator norm of x -> conv2d(x, weight, stride=stride, padding=padding) for inputs
    of spatial size ``input_size`` (H, W), from the polyphase circulant embedding (module docstring); exact for a
    1 x 1 kernel and for inputs of at most ``dense_max`` entries C_in H W (the dense matrix's norm; 0: always the
    circulant bound). No estimate is involved: the value is >= the true norm up to float64 rounding, which the
    (1 + 1e-9) factor covers."""
    if not torch.is_tensor(weight) or weight.dim() != 4 or not weight.is_floating_point():
        raise TypeError(f"conv2d_norm_upper_bound: weight must be a floating (C_out, C_in, kH, kW) tensor, got "
                        f"{weight.shape if torch.is_tensor(weight) else type(weight).__name__}")
    if not (isinstance(input_size, (tuple, list)) and len(input_size) == 2):
        raise TypeError(f"conv2d_norm_upper_bound: input_size must be (H, W), got {input_size!r}")
    height, width = (checks.integer("input_size", n, 1, where="conv2d_norm_upper_bound: ") for n in input_size)
    stride = checks.integer("stride", stride, 1, where="conv2d_norm_upper_bound: ")
    padding = checks.integer("padding", padding, 0, where="conv2d_norm_upper_bound: ")
    dense_max = checks.integer("dense_max", dense_max, 0, where="conv2d_norm_upper_bound: ")
    kh, kw = weight.shape[-2:]
    out_h, out_w = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv2d_norm_upper_bound: a {kh}x{kw} kernel with padding {padding} does not fit an input "
                         f"of size {height}x{width}")
    w64 = weight.detach().to(torch.float64)
    numel = weight.shape[1] * height * width
    if numel <= dense_max:   # small: the exact norm of the dense matrix
        basis = torch.eye(numel, dtype=torch.float64, device=weight.device).reshape(numel, -1, height, width)
        cols = F.conv2d(basis, w64, stride=stride, padding=padding).reshape(numel, -1)
        return float(torch.linalg.matrix_norm(cols, ord=2)) * _ROUNDING
    kernel, (qh0, qw0) = _phase_kernel(w64, stride, padding)
    n_h = _grid(-(-height // stride), qh0, kernel.shape[-2], out_h)
    n_w = _grid(-(-width // stride), qw0, kernel.shape[-1], out_w)
    return _max_symbol_norm(kernel, n_h, n_w) * _ROUNDING


def _max_symbol_norm(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """max over the n_h x n_w frequencies of sigma_max of the kernel's Fourier coefficients (step 3): the DFT along
    the width by rfft, along the height by a DFT matrix, a block of height frequencies at a time (the coefficients
    of a large layer on a large grid would not fit in memory at once)."""
    c_out, c_in = kernel.shape[:2]
    along_w = torch.fft.rfft(kernel, n=n_w, dim=-1)                                   # (C_out, C_in', Q_h, F_w)
    taps = torch.arange(kernel.shape[-2], dtype=torch.float64, device=kernel.device)
    rows = torch.arange(n_h, dtype=torch.float64, device=kernel.device)
    dft = torch.polar(torch.ones(n_h, taps.numel(), dtype=torch.float64, device=kernel.device),
                      -2 * math.pi * torch.outer(rows, taps) / n_h)                    # (N_h, Q_h)
    block = max(1, _BLOCK_ENTRIES // (along_w.shape[-1] * c_out * c_in))
    best = 0.0
    for start in range(0, n_h, block):
        symbol = torch.einsum("hq,oiqf->hfoi", dft[start:start + block], along_w)   # one matrix per frequency
        best = max(best, float(torch.linalg.matrix_norm(symbol, ord=2).max()))
    return best


def linear_norm_exact(weight: torch.Tensor) -> float:
    """||W||_2 of a (out, in) matrix: its largest singular value in float64, times (1 + 1e-9) for rounding."""
    if not torch.is_tensor(weight) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError(f"linear_norm_exact: weight must be a floating (out, in) tensor, got "
                        f"{weight.shape if torch.is_tensor(weight) else type(weight).__name__}")
    return float(torch.linalg.matrix_norm(weight.detach().to(torch.float64), ord=2)) * _ROUNDING


@torch.no_grad()
def verified_norm(layer: NormCapped) -> float:
    """A verified upper bound on the operator norm of ``layer``'s map as the forward pass uses it (its effective,
    capped weight; for a k x k convolution on the input size its estimate is made on)."""
    w = layer.effective_weight()
    if isinstance(layer, CappedLinear) or w.dim() == 2:
        return linear_norm_exact(w)
    if isinstance(layer, CappedConv2d) and layer.kernel_size == 1:
        return linear_norm_exact(w.flatten(1))   # per pixel the map is the matrix W (the input size plays no part)
    shape = layer.input_shape()
    if shape is None:
        raise ValueError(f"verified_norm: {layer!r} has no input size (an uncapped k x k convolution), so its "
                         "operator norm is not defined by the layer alone")
    return conv2d_norm_upper_bound(w, shape[-2:], stride=layer.stride, padding=layer.padding)


def verified_lipschitz_bound(module: nn.Module, *, allow_unbounded: bool = False) -> float:
    """:func:`lipschitz_bound` of ``module`` with every capped layer bounded by :func:`verified_norm` instead of its
    power-iteration estimate: a certified bound that rests on no estimate (module docstring). Uncapped layers stay
    unbounded (refused unless ``allow_unbounded``)."""
    leaves = {c: verified_norm(c) for c in capped_layers(module)}
    return lipschitz_bound(module, allow_unbounded=allow_unbounded, leaf_values=leaves)
