"""The shared numerical facts (lmdeq/numerics.py) hold for every backend: the C++ kernels keep their own copy of
each rule (csrc/numerics.h), the Triton kernels and the reference import the Python one; these tests check
that they agree (accumulation dtype of every accumulated output, conv-transpose output padding)."""
import pytest
import torch
import torch.nn.functional as F

from lmdeq import numerics, ops
from lmdeq.ops import reference

from .helpers import DTYPES, randn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_accumulated_outputs_have_the_accumulation_dtype(backend, dtype):
    acc = numerics.acc_dtype(dtype)
    assert acc == (torch.float64 if dtype == torch.float64 else torch.float32)
    zs = [randn((2, 3, 4), dtype, 0), randn((2, 5), dtype, 1)]
    fzs = [randn((2, 3, 4), dtype, 2), randn((2, 5), dtype, 3)]
    outs, res, fzn = ops.fixed_point_update_multi(zs, fzs, 0.5)
    assert (res.dtype, fzn.dtype) == (acc, acc) and [o.dtype for o in outs] == [dtype, dtype]
    _, res1, fzn1 = ops.fixed_point_update(zs[0], fzs[0], 0.5)
    assert (res1.dtype, fzn1.dtype) == (acc, acc)
    X, Fh = randn((2, 3, 7), dtype, 4), randn((2, 3, 7), dtype, 5)
    assert ops.anderson_gram_row(X, Fh, 1).dtype == acc
    assert ops.anderson_mix(X, Fh, torch.full((2, 3), 1 / 3), 0.5).dtype == dtype


# (input side, kernel, stride, padding): every output padding from 0 to stride - 1 occurs.
CONV_SIDES = [(n, k, s, p) for n in (5, 6, 7, 8) for k in (1, 2, 3) for s in (1, 2, 3) for p in (0, 1) if n + 2 * p >= k]


@pytest.mark.parametrize("n,k,s,p", CONV_SIDES)
def test_output_padding_restores_the_input_size(n, k, s, p):
    """numerics' formulas against torch's own conv2d / conv_transpose2d, per side (rectangular input)."""
    x = torch.randn(1, 2, n, n + 1, dtype=torch.float64)
    W = torch.randn(3, 2, k, k, dtype=torch.float64)
    u = F.conv2d(x, W, stride=s, padding=p)
    assert tuple(u.shape[-2:]) == numerics.conv_output_size(x.shape[-2:], W.shape[-2:], s, p)
    pad = numerics.conv_transpose_output_padding(x.shape[-2:], u.shape[-2:], W.shape[-2:], s, p)
    assert all(0 <= q < s for q in pad)
    assert F.conv_transpose2d(u, W, stride=s, padding=p, output_padding=pad).shape == x.shape


def test_every_backend_restores_the_input_size_of_the_conv_power_iteration(backend):
    """Each backend's conv power iteration (C++ rule, Triton host code, reference) over layers whose output
    paddings differ (0, 1 and 2 per side) matches the float64 reference, vectors of their input sizes."""
    cases = [(n, k, s, p) for n, k, s, p in CONV_SIDES if s == 3 and k == 3 and p == 1]
    assert sorted({numerics.conv_transpose_output_padding((n,) * 2, numerics.conv_output_size((n,) * 2, (k,) * 2,
                   s, p), (k,) * 2, s, p)[0] for n, k, s, p in cases}) == [0, 1, 2]
    ws = [randn((3, 2, k, k), torch.float64, i) for i, (_, k, _, _) in enumerate(cases)]
    vs = [randn((1, 2, n, n + 1), torch.float64, 10 + i) for i, (n, _, _, _) in enumerate(cases)]
    strides, paddings = [c[2] for c in cases], [c[3] for c in cases]
    sigmas, new_vs = ops.conv_power_iteration(ws, vs, strides, paddings, 3)
    ref_sigmas, ref_vs = reference.conv_power_iteration(ws, vs, strides, paddings, 3)
    assert [tuple(v.shape) for v in new_vs] == [tuple(v.shape) for v in vs]
    assert torch.allclose(sigmas, ref_sigmas, rtol=1e-10)
    for v, r in zip(new_vs, ref_vs):
        assert torch.allclose(v, r, rtol=1e-9, atol=1e-12)
