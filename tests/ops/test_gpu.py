"""Every op on a CUDA device, on the CUDA and Triton backends, against the float64 reference
(run by scripts/gpu_check.sh; skipped where no CUDA device exists)."""
import pytest
import torch

from lmdeq import ops
from lmdeq.ops import backends, reference
from lmdeq.ops.power_iteration import _GRAPHS

from .helpers import DTYPES, assert_all_close, assert_close, poisoned_outputs, randn, up

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]

# MDEQ-large state at batch 4: branches (32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4).
LARGE = [(4, 32, 32, 32), (4, 64, 16, 16), (4, 128, 8, 8), (4, 256, 4, 4)]


@pytest.fixture(params=GPU_BACKENDS)
def gpu_backend(request, monkeypatch):
    why = backends.unavailable_reason(request.param, "cuda")
    if why:
        pytest.fail(f"backend {request.param} unavailable on this GPU machine: {why}")
    monkeypatch.setenv(backends.ENV_VAR, request.param)
    return request.param


def _dev(shape, dtype, seed):
    return randn(shape, dtype, seed, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 7), (3, 5, 7), (2, 3 * 4096 + 5), (0, 5), (5, 61440)], ids=str)
def test_fixed_point_update(gpu_backend, shape, dtype):
    z, fz = _dev(shape, dtype, 0), _dev(shape, dtype, 1)
    with poisoned_outputs():
        out, res, fzn = ops.fixed_point_update(z, fz, 0.7)
    ref64 = reference.fixed_point_update(up(z), up(fz), 0.7)
    lowp = reference.fixed_point_update(z, fz, 0.7)
    for got, want, low, what in zip((out, res, fzn), ref64, lowp, ("z_next", "res", "fzn")):
        assert_close(got, want, low, dtype, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fixed_point_update_multi_mdeq_large(gpu_backend, dtype):
    shapes = LARGE + [(4, 3, 5), (4, 1), (4, 9, 9, 9), (4, 2), (4, 8193)]  # 9 tensors: > 1 launch per kernel
    zs = [_dev(s, dtype, i) for i, s in enumerate(shapes)]
    fzs = [_dev(s, dtype, 50 + i) for i, s in enumerate(shapes)]
    zs[0] = zs[0].contiguous(memory_format=torch.channels_last)
    fzs[0] = fzs[0].contiguous(memory_format=torch.channels_last)
    zs[1] = zs[1][:, :, ::2]  # non-contiguous: copied
    fzs[1] = fzs[1][:, :, ::2]
    with poisoned_outputs():
        outs, res, fzn = ops.fixed_point_update_multi(zs, fzs, 0.5)
    ref64 = reference.fixed_point_update_multi([up(z) for z in zs], [up(f) for f in fzs], 0.5)
    lowp = reference.fixed_point_update_multi(zs, fzs, 0.5)
    assert_all_close(outs, ref64[0], lowp[0], dtype, "z_next")
    assert_close(res, ref64[1], lowp[1], dtype, "res")
    assert_close(fzn, ref64[2], lowp[2], dtype, "fzn")
    again = ops.fixed_point_update_multi(zs, fzs, 0.5)
    assert torch.equal(again[1], res) and torch.equal(again[2], fzn)  # deterministic


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 333), (4, 6, 61440), (2, 11, 5000), (0, 3, 5)], ids=str)
def test_anderson(gpu_backend, shape, dtype):
    X, Fh = _dev(shape, dtype, 2), _dev(shape, dtype, 3)
    alpha = _dev(shape[:2], torch.float32, 4)
    k = shape[1] - 1
    with poisoned_outputs():
        H = ops.anderson_gram_row(X, Fh, k)
        x = ops.anderson_mix(X, Fh, alpha, 0.8)
    assert_close(H, reference.anderson_gram_row(up(X), up(Fh), k), reference.anderson_gram_row(X, Fh, k), dtype, "H")
    assert_close(x, reference.anderson_mix(up(X), up(Fh), up(alpha), 0.8), reference.anderson_mix(X, Fh, alpha, 0.8),
                 dtype, "mix")


def test_anderson_rows_beyond_int32_offsets(gpu_backend):
    """History rows 2^30 + 64 elements apart (a strided view, m = 3): row j = 2 starts past 2^31, where int32
    offsets j * sxm would wrap. Two 4.3 GB bf16 buffers; only the three rows used are filled."""
    n, sxm, m = 1000, 2 ** 30 + 64, 3
    hist = []
    for seed in (20, 21):
        base = torch.empty((m - 1) * sxm + n, dtype=torch.bfloat16, device="cuda")
        for j in range(m):
            base[j * sxm:j * sxm + n] = _dev((n,), torch.bfloat16, seed + 10 * j)
        hist.append(base.as_strided((1, m, n), ((m - 1) * sxm + n, sxm, 1)))
    X, Fh = hist
    Xc, Fc = X.contiguous(), Fh.contiguous()  # the same rows, packed
    alpha = _dev((1, m), torch.float32, 22)
    with poisoned_outputs():
        H = ops.anderson_gram_row(X, Fh, m - 1)
        x = ops.anderson_mix(X, Fh, alpha, 0.8)
    assert_close(H, reference.anderson_gram_row(up(Xc), up(Fc), m - 1), reference.anderson_gram_row(Xc, Fc, m - 1),
                 torch.bfloat16, "H")
    assert_close(x, reference.anderson_mix(up(Xc), up(Fc), up(alpha), 0.8), reference.anderson_mix(Xc, Fc, alpha, 0.8),
                 torch.bfloat16, "mix")
    del hist, X, Fh
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_power_iteration_matrices(gpu_backend, dtype):
    shapes = [(5, 3), (1280, 256), (33, 70), (1, 4)] + [(16, 8)] * 40  # > 32 layers: several argument groups
    weights = [_dev(s, dtype, 10 + i) for i, s in enumerate(shapes)]
    us = [_dev((s[0],), dtype, 100 + i) for i, s in enumerate(shapes)]
    with poisoned_outputs():
        sigmas, new_us = ops.power_iteration_matrices(weights, us, 3)
    ref64 = reference.power_iteration_matrices([up(w) for w in weights], [up(u) for u in us], 3)
    lowp = reference.power_iteration_matrices(weights, us, 3)
    assert_close(sigmas, ref64[0], lowp[0], dtype, "sigmas")
    assert_all_close(new_us, ref64[1], lowp[1], dtype, "us")


@pytest.mark.parametrize("graphs", ["1", "0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_conv_power_iteration(gpu_backend, dtype, graphs, monkeypatch):
    monkeypatch.setenv("LMDEQ_CUDA_GRAPHS", graphs)
    convs = [((32, 32, 3, 3), (32, 32), 1, 1), ((64, 32, 3, 3), (32, 32), 2, 1), ((16, 8, 1, 1), (7, 5), 1, 0),
             ((8, 16, 3, 3), (9, 9), 2, 0)] + [((4, 4, 3, 3), (6, 6), 1, 1)] * 35
    replays = _GRAPHS.replays
    for seed in (0, 1):  # second call: graph replay with new weights and vectors
        weights = [_dev(w, dtype, seed * 1000 + i) for i, (w, *_r) in enumerate(convs)]
        vs = [_dev((1, w[1], *hw), dtype, seed * 1000 + 100 + i) for i, (w, hw, _s, _p) in enumerate(convs)]
        strides, paddings = [c[2] for c in convs], [c[3] for c in convs]
        sigmas, new_vs = ops.conv_power_iteration(weights, vs, strides, paddings, 2)
        ref64 = reference.conv_power_iteration([up(w) for w in weights], [up(v) for v in vs], strides, paddings, 2)
        lowp = reference.conv_power_iteration(weights, vs, strides, paddings, 2)
        # cuDNN may use TF32 for fp32 convolutions: allow for it in the tolerance
        assert_close(sigmas, ref64[0], lowp[0], dtype, "sigmas")
        assert_all_close(new_vs, ref64[1], lowp[1], dtype, "vs")
    assert _GRAPHS.enabled(weights[0].device) == (graphs == "1")
    assert (_GRAPHS.replays - replays == 2) == (graphs == "1") and not _GRAPHS.failures
