"""Verified operator norms (lmdeq.models.verified): the polyphase circulant bound against dense float64 Jacobians,
its exact cases, the verified bound of whole models, and bad input."""
import random

import pytest
import torch

from lmdeq import jacobian_norm, verified_lipschitz_bound
from lmdeq.errors import UnsupportedError
from lmdeq.models import (CappedConv2d, CappedLinear, ScaledReLU, Sequential, conv2d_norm_upper_bound, mdeq,
                          refresh_norm_estimates)
from lmdeq.models.verified import linear_norm_exact, verified_norm

from .tiny import TINY2, TINY3, dense_conv_norm, scale_weights_


def _is_exact(bound, exact):
    """``bound`` is ``exact`` times the (1 + 1e-9) rounding allowance, up to float64 rounding."""
    return exact <= bound <= exact * (1 + 3e-9)


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,size", [
    (3, 4, 3, 1, 1, (8, 8)),
    (3, 4, 3, 2, 1, (8, 8)),      # stride 2: four phases
    (2, 5, 3, 2, 1, (7, 5)),      # odd, non-square sizes: phases of unequal size
    (2, 3, 5, 1, 2, (9, 6)),
    (2, 3, 5, 2, 2, (9, 6)),
    (2, 3, 4, 2, 1, (9, 9)),      # even kernel, padding below k // 2
    (2, 3, 3, 1, 0, (6, 6)),      # no padding ("valid")
    (1, 1, 3, 2, 3, (4, 5)),      # padding above k // 2: outputs that read only zeros
    (2, 2, 3, 3, 1, (10, 7)),     # stride = kernel: one tap per phase, the bound is exact
    (1, 1, 3, 1, 1, (3, 3)),      # B = 1 channel, smallest sizes
])
def test_the_circulant_bound_is_above_the_exact_norm(c_in, c_out, k, stride, padding, size):
    torch.manual_seed(0)
    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    exact = dense_conv_norm(w, (1, c_in) + size, stride, padding)
    bound = conv2d_norm_upper_bound(w, size, stride, padding, dense_max=0)   # the circulant path
    assert exact <= bound
    # the default takes the dense matrix at these sizes: the exact norm
    assert _is_exact(conv2d_norm_upper_bound(w, size, stride, padding), exact)


def test_the_circulant_bound_holds_for_random_geometries():
    rng = random.Random(3)
    torch.manual_seed(3)
    checked = 0
    for _ in range(150):
        k, s = rng.randint(1, 5), rng.randint(1, 3)
        p, h, w_ = rng.randint(0, k), rng.randint(k, 8), rng.randint(k, 8)
        w = torch.randn(rng.randint(1, 3), rng.randint(1, 3), k, k, dtype=torch.float64)
        exact = dense_conv_norm(w, (1, w.shape[1], h, w_), s, p)
        assert exact <= conv2d_norm_upper_bound(w, (h, w_), s, p, dense_max=0), (k, s, p, h, w_)
        checked += exact > 0
    assert checked > 100


def test_the_bound_is_exact_for_1x1_and_tight_at_image_sizes():
    torch.manual_seed(1)
    w1 = torch.randn(5, 7, 1, 1, dtype=torch.float64)
    assert _is_exact(conv2d_norm_upper_bound(w1, (20, 20), dense_max=0),
                     float(torch.linalg.matrix_norm(w1.flatten(1), ord=2)))
    w3 = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    exact = dense_conv_norm(w3, (1, 2, 24, 24), 1, 1)   # 1152 entries: above the dense default, so the circulant path
    bound = conv2d_norm_upper_bound(w3, (24, 24), 1, 1)
    assert exact <= bound <= exact * 1.02


def test_frequencies_taken_a_block_at_a_time_give_the_same_bound(monkeypatch):
    torch.manual_seed(8)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    whole = conv2d_norm_upper_bound(w, (20, 17), 2, 1, dense_max=0)
    monkeypatch.setattr("lmdeq.models.verified._BLOCK_ENTRIES", 1)   # one frequency row per block
    assert conv2d_norm_upper_bound(w, (20, 17), 2, 1, dense_max=0) == pytest.approx(whole, rel=1e-12)


def test_inputs_in_any_layout_and_precision_give_the_same_bound():
    torch.manual_seed(2)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ref = conv2d_norm_upper_bound(w, (12, 10), 2, 1, dense_max=0)
    strided = torch.randn(4, 3, 3, 3, dtype=torch.float64).transpose(0, 1)   # non-contiguous
    strided.copy_(w)
    assert not strided.is_contiguous()
    assert conv2d_norm_upper_bound(strided, (12, 10), 2, 1, dense_max=0) == ref
    w32 = w.float()
    assert conv2d_norm_upper_bound(w32, (12, 10), 2, 1, dense_max=0) == pytest.approx(
        conv2d_norm_upper_bound(w32.double(), (12, 10), 2, 1, dense_max=0), rel=1e-12)


@pytest.mark.parametrize("call,error,needle", [
    (lambda: conv2d_norm_upper_bound(torch.randn(3, 3, 3), (4, 4)), TypeError, "weight must be a floating"),
    (lambda: conv2d_norm_upper_bound(torch.ones(1, 1, 3, 3, dtype=torch.int64), (4, 4)), TypeError, "weight"),
    (lambda: conv2d_norm_upper_bound([[1.0]], (4, 4)), TypeError, "weight must be a floating .* got list"),
    (lambda: conv2d_norm_upper_bound(torch.randn(1, 1, 3, 3), 4), TypeError, "input_size must be \\(H, W\\)"),
    (lambda: conv2d_norm_upper_bound(torch.randn(1, 1, 3, 3), (0, 4)), ValueError, "input_size must be an int >= 1"),
    (lambda: conv2d_norm_upper_bound(torch.randn(1, 1, 3, 3), (4, 4), stride=0), ValueError, "stride"),
    (lambda: conv2d_norm_upper_bound(torch.randn(1, 1, 3, 3), (4, 4), padding=-1), ValueError, "padding"),
    (lambda: conv2d_norm_upper_bound(torch.randn(1, 1, 5, 5), (2, 2)), ValueError, "does not fit an input of size 2x2"),
    (lambda: conv2d_norm_upper_bound(torch.randn(1, 1, 3, 3), (4, 4), dense_max=-1), ValueError, "dense_max"),
    (lambda: linear_norm_exact(torch.randn(3)), TypeError, "weight must be a floating \\(out, in\\) tensor"),
])
def test_bad_input_is_an_error_naming_the_argument(call, error, needle):
    with pytest.raises(error, match=needle):
        call()


def test_verified_norm_of_capped_layers_is_the_exact_norm_of_the_effective_weight():
    torch.manual_seed(4)
    conv = CappedConv2d(3, 4, 3, stride=2, input_size=(7, 6), cap=0.5, margin=0.05).double()
    lin = CappedLinear(6, 5, cap=0.5).double()
    with torch.no_grad():
        conv.weight.mul_(100.0)   # far above the cap: the effective weight is scaled down
    refresh_norm_estimates(torch.nn.Sequential(conv, lin), 50)
    exact = dense_conv_norm(conv.effective_weight(), (1, 3, 7, 6), 2, 1)
    assert _is_exact(verified_norm(conv), exact)
    assert verified_norm(conv) <= 0.5 * (1 + 1e-6)
    assert _is_exact(verified_norm(lin), float(torch.linalg.matrix_norm(lin.effective_weight().detach(), ord=2)))


@pytest.mark.parametrize("tiny", [TINY2, TINY3])
def test_a_models_verified_bound_is_above_its_jacobian_norms(tiny):
    torch.manual_seed(5)
    model = mdeq("cifar10-small", **tiny).double()
    scale_weights_(model, conv_factor=30.0, gamma_factor=5.0)   # every conv at its cap, gammas at theirs
    model.constraint_step(n_iter=30)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    for mode in (True, False):
        model.train(mode)
        verified = model.verified_lipschitz_bound()
        f, z0 = model.fixed_point_problem(x)
        for _ in range(2):
            point = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in z0]
            assert jacobian_norm(f, point, iters=30) <= verified
        # every estimate is within its margin here, so the verified bound confirms the estimated one
        assert verified <= model.lipschitz_bound() * (1 + 1e-9)


def test_the_verified_bound_catches_an_estimate_that_fell_short():
    torch.manual_seed(7)
    model = mdeq("cifar10-small", **TINY2).double().eval()
    honest = model.verified_lipschitz_bound()
    with torch.no_grad():   # an estimate 100x too small, as if power iteration had missed the top direction
        for conv in model.cell.convs():
            conv.sigma.div_(100.0)
    assert model.lipschitz_bound() < honest   # the estimate-based bound believes it
    assert model.verified_lipschitz_bound() > model.lipschitz_bound()


def test_uncapped_layers_are_refused_by_name():
    f = Sequential(CappedConv2d(2, 2, 3, input_size=(4, 4)), ScaledReLU(0.5))
    with pytest.raises(UnsupportedError, match=r"'0' \(CappedConv2d\): it has no cap"):
        verified_lipschitz_bound(f)
    assert verified_lipschitz_bound(f, allow_unbounded=True) == float("inf")
    original = mdeq("cifar10-small", lipschitz=False, **TINY2)
    assert original.verified_lipschitz_bound() == float("inf")
