"""Op 1, the fused fixed-point update, on every CPU backend against the float64 reference."""
import pytest
import torch

from lmdeq import ops
from lmdeq.ops import reference

from .helpers import DTYPES, assert_all_close, assert_close, poisoned_outputs, randn, up

# Per-sample sizes: odd, not a multiple of any block, and spanning several blocks of every backend
# (Triton chunks hold 4096 elements, the C++ CPU chunks 8192).
SHAPES = {
    "B1": (1, 7),
    "odd": (3, 5, 7),
    "many_blocks": (2, 3 * 8192 + 5),
    "zero_batch": (0, 5),
    "4d": (2, 3, 4, 5),
}


def _pair(shape, dtype, seed):
    return randn(shape, dtype, seed), randn(shape, dtype, seed + 1)


def _check(z, fz, tau, out, res, fzn, dtype):
    ref64 = reference.fixed_point_update(up(z), up(fz), tau)
    lowp = reference.fixed_point_update(z, fz, tau)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and out.shape == z.shape and res.dtype == acc and fzn.dtype == acc
    assert res.shape == fzn.shape == (z.shape[0],)
    assert_close(out, ref64[0], lowp[0], dtype, "z_next")
    assert_close(res, ref64[1], lowp[1], dtype, "res_norm")
    assert_close(fzn, ref64[2], lowp[2], dtype, "fz_norm")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_single_matches_reference(backend, shape, dtype):
    z, fz = _pair(shape, dtype, 0)
    with poisoned_outputs():
        out, res, fzn = ops.fixed_point_update(z, fz, 0.7)
    _check(z, fz, 0.7, out, res, fzn, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_and_channels_last(backend, dtype):
    base_z, base_f = _pair((3, 6, 5, 7), dtype, 1)
    z, fz = base_z[:, ::2], base_f[:, ::2]  # strided views: copied to contiguous
    with poisoned_outputs():
        out, res, fzn = ops.fixed_point_update(z, fz, 0.3)
    _check(z, fz, 0.3, out, res, fzn, dtype)

    cz = base_z.contiguous(memory_format=torch.channels_last)
    cf = base_f.contiguous(memory_format=torch.channels_last)
    with poisoned_outputs():
        out, res, fzn = ops.fixed_point_update(cz, cf, 0.3)
    assert out.is_contiguous(memory_format=torch.channels_last)  # processed in place, layout kept
    _check(cz, cf, 0.3, out, res, fzn, dtype)

    with poisoned_outputs():  # mixed layouts
        out, res, fzn = ops.fixed_point_update(cz, base_f, 0.3)
    _check(cz, base_f, 0.3, out, res, fzn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multi_mixed_shapes(backend, dtype):
    # 5 tensors: more than one launch's worth of slots in the Triton kernel (4)
    shapes = [(2, 3, 8, 8), (2, 5, 4, 4), (2, 7), (2, 1, 3, 3), (2, 8193)]
    zs = [randn(s, dtype, 10 + i) for i, s in enumerate(shapes)]
    fzs = [randn(s, dtype, 20 + i) for i, s in enumerate(shapes)]
    zs[1] = zs[1].contiguous(memory_format=torch.channels_last)
    with poisoned_outputs():
        outs, res, fzn = ops.fixed_point_update_multi(zs, fzs, 0.6)
    ref64 = reference.fixed_point_update_multi([up(z) for z in zs], [up(f) for f in fzs], 0.6)
    lowp = reference.fixed_point_update_multi(zs, fzs, 0.6)
    assert [o.shape for o in outs] == [z.shape for z in zs]
    assert_all_close(outs, ref64[0], lowp[0], dtype, "z_next")
    assert_close(res, ref64[1], lowp[1], dtype, "res_norm")
    assert_close(fzn, ref64[2], lowp[2], dtype, "fz_norm")


def test_multi_single_tensor_and_zero_batch(backend):
    z, fz = _pair((1, 9), torch.float32, 3)
    outs, res, fzn = ops.fixed_point_update_multi([z], [fz], 1.0)
    assert torch.equal(outs[0], fz)  # tau = 1: z_next = f(z) exactly
    assert_close(res, (up(fz) - up(z)).norm(dim=1))
    outs, res, fzn = ops.fixed_point_update_multi([torch.empty(0, 3), torch.empty(0, 2, 2)],
                                                  [torch.empty(0, 3), torch.empty(0, 2, 2)], 0.5)
    assert [o.shape for o in outs] == [(0, 3), (0, 2, 2)] and res.shape == fzn.shape == (0,)


def test_nan_and_inf_propagate_to_the_norms(backend):
    z, fz = _pair((3, 4100), torch.float32, 4)
    z[1, 4099] = float("nan")
    fz[2, 17] = float("inf")
    out, res, fzn = ops.fixed_point_update(z, fz, 0.5)
    assert torch.isfinite(res[0]) and torch.isfinite(fzn[0])
    assert torch.isnan(res[1]) and torch.isfinite(fzn[1])
    assert torch.isinf(res[2]) and torch.isinf(fzn[2])
    assert torch.isnan(out[1, 4099]) and torch.isinf(out[2, 17])


def test_deterministic(backend):
    z, fz = _pair((4, 3 * 8192 + 1), torch.float32, 5)
    first = ops.fixed_point_update(z, fz, 0.9)
    second = ops.fixed_point_update(z, fz, 0.9)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_gradients_match_autograd_of_the_reference(backend):
    zs = [randn((2, 3, 2), torch.float64, 6).requires_grad_(), randn((2, 5), torch.float64, 7).requires_grad_()]
    fzs = [randn((2, 3, 2), torch.float64, 8).requires_grad_(), randn((2, 5), torch.float64, 9).requires_grad_()]
    w = [randn((2, 3, 2), torch.float64, 11), randn((2, 5), torch.float64, 12)]

    def loss(fn):
        outs, res, fzn = fn(zs, fzs, 0.4)
        weights = torch.tensor([1.0, -2.0], dtype=torch.float64)
        return sum((o * wi).sum() for o, wi in zip(outs, w)) + (res * weights).sum() + 3.0 * fzn.sum()

    got = torch.autograd.grad(loss(ops.fixed_point_update_multi), zs + fzs)
    want = torch.autograd.grad(loss(reference.fixed_point_update_multi), zs + fzs)
    for g, r in zip(got, want):
        assert_close(g, r, dtype=torch.float64, what="gradient")
    z, fz = zs[1].detach().requires_grad_(), fzs[1].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.fixed_point_update(a, b, 0.4), (z, fz))
