"""Op 3, power iteration on matrices and on convolution operators, against the float64 reference and
against exact spectral norms."""
import pytest
import torch
import torch.nn.functional as F

from lmdeq import ops
from lmdeq.ops import backends, reference

from .helpers import DTYPES, assert_all_close, assert_close, poisoned_outputs, randn, up

MATRIX_SHAPES = [(5, 3), (8, 3, 3, 3), (1, 4), (33, 70), (70, 2)]
# (weight shape, input (H, W), stride, padding): odd sizes, stride 2 with an output padding, 1x1.
CONVS = [((4, 3, 3, 3), (8, 8), 1, 1), ((6, 4, 3, 3), (9, 9), 2, 1), ((5, 2, 1, 1), (5, 5), 1, 0),
         ((3, 3, 3, 3), (7, 6), 2, 0)]


def _matrices(dtype, seed):
    weights = [randn(s, dtype, seed + i) for i, s in enumerate(MATRIX_SHAPES)]
    us = [randn((s[0],), dtype, seed + 100 + i) for i, s in enumerate(MATRIX_SHAPES)]
    return weights, us


def _convs(dtype, seed):
    weights = [randn(w, dtype, seed + i) for i, (w, *_rest) in enumerate(CONVS)]
    vs = [randn((1, w[1], *hw), dtype, seed + 100 + i) for i, (w, hw, _s, _p) in enumerate(CONVS)]
    return weights, vs, [c[2] for c in CONVS], [c[3] for c in CONVS]


@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matrices_match_reference(backend, dtype, n_iter):
    weights, us = _matrices(dtype, 0)
    with poisoned_outputs():
        sigmas, new_us = ops.power_iteration_matrices(weights, us, n_iter)
    ref64 = reference.power_iteration_matrices([up(w) for w in weights], [up(u) for u in us], n_iter)
    lowp = reference.power_iteration_matrices(weights, us, n_iter)
    assert sigmas.shape == (len(weights),) and sigmas.dtype == dtype
    assert [u.shape for u in new_us] == [u.shape for u in us] and all(u.dtype == dtype for u in new_us)
    assert_close(sigmas, ref64[0], lowp[0], dtype, "sigmas")
    assert_all_close(new_us, ref64[1], lowp[1], dtype, "us")


def test_matrices_converge_to_the_spectral_norm(backend):
    weights, us = _matrices(torch.float64, 1)
    sigmas, _ = ops.power_iteration_matrices(weights, us, 300)
    exact = torch.stack([torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), 2) for w in weights])
    assert_close(sigmas, exact, dtype=torch.float32, what="converged sigmas")


def test_matrices_non_contiguous_weight(backend):
    W = randn((40, 30), torch.float32, 2).t()  # (30, 40) transposed view
    u = randn((30,), torch.float32, 3)
    sigmas, new_us = ops.power_iteration_matrices([W], [u], 2)
    ref = reference.power_iteration_matrices([up(W)], [up(u)], 2)
    assert_close(sigmas, ref[0], what="sigma")
    assert_close(new_us[0], ref[1][0], what="u")


@pytest.mark.parametrize("n_iter", [0, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_matches_reference(backend, dtype, n_iter):
    weights, vs, strides, paddings = _convs(dtype, 3)
    try:
        lowp = reference.conv_power_iteration(weights, vs, strides, paddings, n_iter)
    except RuntimeError as exc:  # e.g. no fp16 convolution on this CPU build
        pytest.skip(f"the reference cannot run in {dtype} here: {exc}")
    with poisoned_outputs():
        sigmas, new_vs = ops.conv_power_iteration(weights, vs, strides, paddings, n_iter)
    ref64 = reference.conv_power_iteration([up(w) for w in weights], [up(v) for v in vs], strides, paddings, n_iter)
    assert sigmas.shape == (len(weights),) and sigmas.dtype == dtype
    assert [v.shape for v in new_vs] == [v.shape for v in vs]
    assert_close(sigmas, ref64[0], lowp[0], dtype, "sigmas")
    assert_all_close(new_vs, ref64[1], lowp[1], dtype, "vs")


def _dense_operator_norm(W, hw, stride, padding):
    n = W.shape[1] * hw[0] * hw[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, W.shape[1], *hw)
    A = F.conv2d(basis, W, stride=stride, padding=padding).reshape(n, -1)
    return torch.linalg.matrix_norm(A, 2)


def test_conv_converges_to_the_operator_norm_from_below(backend):
    # Conv operators have clustered top singular values: convergence is slow, so the check is loose;
    # sigma is a Rayleigh-type lower estimate and must never exceed the exact norm.
    weights, vs, strides, paddings = _convs(torch.float64, 4)
    sigmas, new_vs = ops.conv_power_iteration(weights, vs, strides, paddings, 200)
    exact = torch.stack([_dense_operator_norm(w, c[1], c[2], c[3]) for w, c in zip(weights, CONVS)])
    assert (sigmas <= exact * (1 + 1e-12)).all(), (sigmas, exact)
    assert ((exact - sigmas) / exact).max() < 1e-3, (sigmas, exact)
    assert all(abs(float(v.norm()) - 1.0) < 1e-12 for v in new_vs)


def test_empty_layer_lists(backend):
    sigmas, us = ops.power_iteration_matrices([], [], 1)
    assert sigmas.shape == (0,) and us == []
    sigmas, vs = ops.conv_power_iteration([], [], [], [], 1)
    assert sigmas.shape == (0,) and vs == []


def test_outputs_are_fresh_tensors(backend):
    weights, vs, strides, paddings = _convs(torch.float32, 5)
    _, new_vs = ops.conv_power_iteration(weights, vs, strides, paddings, 0)
    ptrs = {v.data_ptr() for v in new_vs} | {v.data_ptr() for v in vs}
    assert len(ptrs) == 2 * len(vs)


@pytest.mark.parametrize("op", ["conv", "matrices"])
def test_autocast_does_not_reach_the_iteration(backend, op):
    """The ops compute in the weights' dtype under an enclosing autocast: a custom op has no autocast
    kernel, so without the guard the convolutions inside would run in bf16."""
    if op == "conv":
        weights, vs, strides, paddings = _convs(torch.float32, 7)
        call = lambda: ops.conv_power_iteration(weights, vs, strides, paddings, 2)  # noqa: E731
    else:
        weights, us = _matrices(torch.float32, 7)
        call = lambda: ops.power_iteration_matrices(weights, us, 2)  # noqa: E731
    plain = call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = call()
    assert cast[0].dtype == torch.float32 and torch.equal(cast[0], plain[0])
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(cast[1], plain[1]))


def test_norm_estimates_under_autocast_equal_fp32():
    """update_norm_estimates (the model's constraint upkeep) inside a bf16 autocast region stores the
    fp32 estimates it stores outside one, bit for bit."""
    import copy

    from lmdeq.models.capped import CappedConv2d
    from lmdeq.models.constraints import update_norm_estimates

    torch.manual_seed(0)
    convs = [CappedConv2d(4, 6, 3, input_size=(8, 8), cap=2.0), CappedConv2d(6, 4, 3, stride=2, input_size=(9, 9), cap=2.0),
             CappedConv2d(6, 5, 1, cap=2.0)]
    twins = copy.deepcopy(convs)
    update_norm_estimates(convs, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        update_norm_estimates(twins, 3)
    for a, b in zip(convs, twins):
        assert b.sigma.dtype == torch.float32 and torch.equal(a.sigma, b.sigma)
        assert torch.equal(a.power_vector, b.power_vector)


@pytest.mark.skipif(backends.unavailable_reason("triton", "cpu") is not None,
                    reason=str(backends.unavailable_reason("triton", "cpu")))
def test_triton_layer_table_is_built_once_per_weights(monkeypatch):
    """The Triton matrix power iteration keeps its per-layer table on the device: the same weights in the
    next step (new vectors) reuse it, other weights get their own, and the cache stays bounded."""
    tables = backends.triton_kernels().power_iteration._TABLES
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    monkeypatch.setattr(backends.triton_kernels().power_iteration, "MAX_TABLES", 2)
    tables.clear()
    weights, _ = _matrices(torch.float32, 3)
    for seed in (0, 1):  # a "training step" later: same weights, the vectors moved on
        us = [randn((w.shape[0],), torch.float32, 200 + 10 * seed + i) for i, w in enumerate(weights)]
        sigmas, new_us = ops.power_iteration_matrices(weights, us, 2)
        ref64 = reference.power_iteration_matrices([up(w) for w in weights], [up(u) for u in us], 2)
        lowp = reference.power_iteration_matrices(weights, us, 2)
        assert_close(sigmas, ref64[0], lowp[0], torch.float32, "sigmas")
        assert_all_close(new_us, ref64[1], lowp[1], torch.float32, "us")
        assert len(tables) == 1
    first = next(iter(tables))
    for seed in (5, 6):
        other, us = _matrices(torch.float32, seed)
        ops.power_iteration_matrices(other, us, 1)
    assert len(tables) == 2 and first not in tables  # least recently used out
