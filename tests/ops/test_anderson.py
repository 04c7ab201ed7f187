"""Op 2, the Anderson Gram row and mixing, on every CPU backend against the float64 reference."""
import pytest
import torch

from lmdeq import ops
from lmdeq.ops import reference

from .helpers import DTYPES, assert_close, poisoned_outputs, randn, up

# (B, m, n): B = 1, odd sizes, n spanning several chunks (Triton 1024 at m <= 8, C++ 2048), zero batch.
SHAPES = {"B1": (1, 1, 7), "odd": (3, 5, 333), "many_chunks": (2, 6, 2 * 2048 + 3), "zero_batch": (0, 3, 5)}


def _history(shape, dtype, seed):
    return randn(shape, dtype, seed), randn(shape, dtype, seed + 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gram_row_matches_reference(backend, shape, dtype):
    X, Fh = _history(shape, dtype, 0)
    for k in sorted({0, shape[1] - 1}):
        with poisoned_outputs():
            H = ops.anderson_gram_row(X, Fh, k)
        assert H.shape == shape[:2] and H.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_close(H, reference.anderson_gram_row(up(X), up(Fh), k), reference.anderson_gram_row(X, Fh, k),
                     dtype, f"gram row k={k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_mix_matches_reference(backend, shape, dtype):
    X, Fh = _history(shape, dtype, 1)
    alpha = randn(shape[:2], torch.float32, 2)
    with poisoned_outputs():
        x = ops.anderson_mix(X, Fh, alpha, 0.8)
    assert x.shape == (shape[0], shape[2]) and x.dtype == dtype
    assert_close(x, reference.anderson_mix(up(X), up(Fh), up(alpha), 0.8),
                 reference.anderson_mix(X, Fh, alpha, 0.8), dtype, "mix")


def test_history_views(backend):
    # Solvers pass slices of larger buffers (non-contiguous batch/history strides, unit inner stride)
    # and possibly transposed ones (inner stride != 1: copied).
    big_X, big_F = _history((3, 8, 301), torch.float32, 3)
    X, Fh = big_X[:, 1:6], big_F[:, 2:7]
    Xt = randn((3, 301, 5), torch.float32, 5).transpose(1, 2)
    alpha = randn((3, 5), torch.float64, 4)
    for A, B in ((X, Fh), (Xt, Fh), (X, Xt)):
        with poisoned_outputs():
            H = ops.anderson_gram_row(A, B, 2)
            x = ops.anderson_mix(A, B, alpha, 0.5)
        assert_close(H, reference.anderson_gram_row(up(A), up(B), 2), what="gram row (view)")
        assert_close(x, reference.anderson_mix(up(A), up(B), alpha, 0.5), what="mix (view)")


def test_nan_propagates(backend):
    X, Fh = _history((2, 3, 50), torch.float32, 6)
    Fh[1, 2, 7] = float("nan")
    H = ops.anderson_gram_row(X, Fh, 0)
    assert torch.isfinite(H[0]).all() and torch.isnan(H[1, 2])
    x = ops.anderson_mix(X, Fh, torch.ones(2, 3), 0.5)
    assert torch.isfinite(x[0]).all() and torch.isnan(x[1, 7])


def test_gram_row_deterministic(backend):
    X, Fh = _history((2, 4, 3 * 2048 + 11), torch.float32, 7)
    assert torch.equal(ops.anderson_gram_row(X, Fh, 3), ops.anderson_gram_row(X, Fh, 3))
