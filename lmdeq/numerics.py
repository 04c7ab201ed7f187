"""Numerical facts shared by every implementation of lmdeq's ops: the one Python home of each rule.

The Triton kernels (``lmdeq.kernels``), the plain-PyTorch reference (``lmdeq.ops.reference``) and the
solvers import these; nothing here imports the rest of lmdeq (a leaf of the layer map). The C++ kernels
keep their own copy of each rule in ``csrc/numerics.h``; tests/ops/test_shared_facts.py checks that the
compiled kernels and these functions agree.

* accumulation dtype: reductions of fp16 / bf16 / fp32 storage accumulate in fp32, of fp64 in fp64;
* ``NORM_EPS``: the floor of a norm before it divides (``F.normalize``'s eps);
* ``REL_EPS``: a relative residual is ||f(z) - z|| / (||f(z)|| + REL_EPS) (TorchDEQ's 1e-9), so a zero state
  has a finite relative residual;
* convolution sizes: conv2d with kernel k, stride s and padding p maps a side of n to
  ``(n + 2p - k) // s + 1``; conv_transpose2d maps o back to ``(o - 1) s - 2p + k + output_padding``, so
  the output padding that restores n exactly is ``n - ((o - 1) s - 2p + k)`` (in [0, s)).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

__all__ = ["NORM_EPS", "REL_EPS", "relative_residual", "acc_dtype", "conv_output_size", "conv_transpose_output_padding"]

NORM_EPS = 1e-12
REL_EPS = 1e-9

IntPair = Union[int, Sequence[int]]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a storage dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def relative_residual(residual, norm):
    """residual / (norm + REL_EPS): the relative residual of an estimate whose image has norm ``norm``."""
    return residual / (norm + REL_EPS)


def _pair(v: IntPair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_output_size(in_hw: Sequence[int], k_hw: Sequence[int], stride: IntPair, padding: IntPair
                     ) -> Tuple[int, int]:
    """(H_out, W_out) of conv2d on an (H, W) input: (n + 2p - k) // s + 1 per side."""
    s, p = _pair(stride), _pair(padding)
    return tuple((int(in_hw[i]) + 2 * p[i] - int(k_hw[i])) // s[i] + 1 for i in range(2))


def conv_transpose_output_padding(in_hw: Sequence[int], out_hw: Sequence[int], k_hw: Sequence[int],
                                  stride: IntPair, padding: IntPair) -> Tuple[int, int]:
    """Output padding for conv_transpose2d so that it maps out_hw (the conv's output) back exactly to in_hw."""
    s, p = _pair(stride), _pair(padding)
    return tuple(int(in_hw[i]) - ((int(out_hw[i]) - 1) * s[i] - 2 * p[i] + int(k_hw[i])) for i in range(2))
