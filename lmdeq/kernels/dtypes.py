"""torch -> Triton dtype mapping, the Triton accumulation dtype (:func:`lmdeq.numerics.acc_dtype`: fp32,
fp64 for fp64 storage), the norm floor as a kernel constant, and fp64-exact scalar arguments."""
import torch
import triton.language as tl

from ..numerics import NORM_EPS, acc_dtype

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
       torch.bfloat16: tl.bfloat16}


def tl_dtype(dtype: torch.dtype):
    return _TL[dtype]


EPS = tl.constexpr(NORM_EPS)  # a constexpr global: readable inside @triton.jit functions


def tl_acc(dtype: torch.dtype):
    return _TL[acc_dtype(dtype)]


def split_float(x: float):
    """(hi, lo) float32-representable parts with hi + lo == x to ~48 bits.

    Triton passes Python floats to kernels as fp32; fp64 kernels rebuild x as hi.to(fp64) + lo.to(fp64)
    so that a scalar like tau = 0.7 keeps fp64 accuracy."""
    hi = float(torch.tensor(x, dtype=torch.float32))
    return hi, float(torch.tensor(x - hi, dtype=torch.float32))
