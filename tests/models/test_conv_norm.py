"""CappedConv2d: power-iteration norm estimates against dense Jacobians, and the cap on the effective weight."""
import pytest
import torch

from lmdeq.models.capped import CappedConv2d
from lmdeq.models.constraints import update_norm_estimates
from lmdeq.models.normalization import MeanOnlyGroupNorm

from .tiny import dense_conv_norm


def _conv(c_in, c_out, k, stride, size, weight_norm=False, cap=2.0, margin=0.05):
    conv = CappedConv2d(c_in, c_out, k, stride=stride, input_size=size, weight_norm=weight_norm, cap=cap,
                     margin=margin).double()
    with torch.no_grad():  # O(1) weights so that the norm is not tiny
        for p in conv.parameters():
            p.normal_(0.0, 0.3)
    return conv


@pytest.mark.parametrize("c_in,c_out,k,stride,size", [
    (3, 5, 3, 1, (5, 7)),
    (4, 2, 3, 2, (7, 5)),   # strided, odd sizes: the output padding of A^T matters
    (6, 3, 3, 2, (6, 6)),
    (5, 7, 1, 1, (3, 3)),   # 1x1: matrix power iteration
    (1, 1, 3, 1, (1, 1)),   # smallest input
])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_norm_estimate_matches_dense_jacobian(c_in, c_out, k, stride, size, weight_norm):
    torch.manual_seed(0)
    conv = _conv(c_in, c_out, k, stride, size, weight_norm=weight_norm)
    update_norm_estimates([conv], 300)
    exact = dense_conv_norm(conv.unscaled_weight(), (1, c_in) + size, stride)
    est = float(conv.sigma)
    assert est <= exact * (1 + 1e-9), "power iteration must give a lower estimate"
    assert abs(est - exact) / exact < 5e-3
    assert exact <= (1 + conv.margin) * est


@pytest.mark.parametrize("weight_norm", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_cap_holds_on_the_effective_weight_after_scaling(weight_norm, stride):
    # Scaling the raw weight (or weight norm's g, the flaw of the authors' release) cannot lift the
    # effective operator norm above the cap once the estimate is refreshed.
    torch.manual_seed(1)
    conv = _conv(3, 4, 3, stride, (6, 5), weight_norm=weight_norm, cap=0.7)
    update_norm_estimates([conv], 50)
    with torch.no_grad():
        (conv.weight_g if weight_norm else conv.weight).mul_(100.0)
    assert conv.estimate_is_stale()
    update_norm_estimates([conv], 50)
    assert not conv.estimate_is_stale()
    exact_eff = dense_conv_norm(conv.effective_weight(), (1, 3, 6, 5), stride)
    assert exact_eff <= 0.7 * (1 + 1e-9)
    assert exact_eff <= float(conv.lipschitz()) * (1 + 1e-9)
    assert float(conv.lipschitz()) == pytest.approx(0.7)


def test_small_conv_is_not_scaled_and_bound_is_the_estimate():
    torch.manual_seed(2)
    conv = _conv(2, 3, 3, 1, (4, 4), cap=100.0, margin=0.1)
    update_norm_estimates([conv], 100)
    assert torch.equal(conv.effective_weight(), conv.unscaled_weight())
    exact = dense_conv_norm(conv.weight, (1, 2, 4, 4), 1)
    assert float(conv.lipschitz()) == pytest.approx(1.1 * float(conv.sigma))
    assert exact <= float(conv.lipschitz())


def test_forward_matches_conv2d_and_gradient_reaches_raw_weight():
    torch.manual_seed(3)
    conv = _conv(3, 4, 3, 2, (7, 7), cap=0.5)
    update_norm_estimates([conv], 30)
    x = torch.randn(2, 5, 9, 7, dtype=torch.float64).transpose(1, 2)[:, :3]  # non-contiguous
    ref = torch.nn.functional.conv2d(x, conv.weight * conv.scale(), stride=2, padding=1)
    out = conv(x)
    assert (out - ref).norm() / ref.norm() < 1e-12
    out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_uncapped_conv_has_no_bound_and_capped_needs_an_estimate():
    conv = CappedConv2d(2, 2, 3, input_size=(4, 4))
    assert conv.lipschitz() == float("inf")
    assert not conv.estimate_is_stale()
    capped = CappedConv2d(2, 2, 3, input_size=(4, 4), cap=1.0)
    assert capped.estimate_is_stale()
    with pytest.raises(RuntimeError, match="no norm estimate"):
        capped.lipschitz()


def test_update_rejects_bad_iteration_count():
    conv = _conv(2, 2, 3, 1, (4, 4))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_iter"):
            update_norm_estimates([conv], bad)


def test_kxk_cap_needs_input_size():
    with pytest.raises(ValueError, match="input_size"):
        CappedConv2d(2, 2, 3, cap=1.0)


def test_mean_only_group_norm_clips_gamma_and_is_a_projection():
    torch.manual_seed(4)
    gn = MeanOnlyGroupNorm(2, 6, gamma_max=0.8).double()
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([3.0, -2.0, 0.5, 0.1, -0.9, 0.0], dtype=torch.float64))
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    xg = x.reshape(3, 2, -1)
    centred = (xg - xg.mean(-1, keepdim=True)).reshape(x.shape)
    gamma = torch.tensor([0.8, -0.8, 0.5, 0.1, -0.8, 0.0], dtype=torch.float64).reshape(1, 6, 1, 1)
    ref = centred * gamma + gn.bias.reshape(1, 6, 1, 1)
    assert (gn(x) - ref).norm() / ref.norm() < 1e-12
    assert float(gn.lipschitz()) == pytest.approx(0.8)
    # Lipschitz check: ||gn(x) - gn(y)|| <= max|gamma_eff| ||x - y|| per sample.
    y = torch.randn_like(x)
    lhs = (gn(x) - gn(y)).reshape(3, -1).norm(dim=1)
    assert (lhs <= 0.8 * (x - y).reshape(3, -1).norm(dim=1) + 1e-12).all()
    gn.project_()
    assert float(gn.weight.detach().abs().max()) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="divisible"):
        MeanOnlyGroupNorm(4, 6)
