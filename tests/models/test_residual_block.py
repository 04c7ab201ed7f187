"""The residual block as evaluated (scalars folded into neighbouring affine maps, in-place ReLUs, the
zero-state path) against its documented formula, b = gn3(act3(a_res z + a_f gn2(drop(conv2
act1(gn1(conv1 z))) + injection))), layer by layer: values and gradients (float64)."""
import pytest
import torch

from lmdeq.models.cell_options import CellOptions
from lmdeq.models.constraints import update_norm_estimates
from lmdeq.models.residual_block import ResidualBlock


def formula(blk, z, injection):
    u = blk.act1(blk.gn1(blk.conv1(z)))
    c = blk.drop(blk.conv2(u))
    v = blk.gn2(c if injection is None else c + injection)
    return blk.gn3(blk.act3(blk.a_res * z + blk.a_f * v))


@pytest.mark.parametrize("with_injection", [True, False], ids=["injection", "no_injection"])
@pytest.mark.parametrize("lipschitz", [True, False], ids=["lipschitz", "original"])
def test_block_equals_its_formula(lipschitz, with_injection):
    torch.manual_seed(0)
    kw = dict(s=0.4, alpha=0.3, conv_cap=2.0) if lipschitz else {}
    blk = ResidualBlock(8, 6, CellOptions(lipschitz=lipschitz, expansion=2, num_groups=4, dropout=0.3,
                                          weight_norm=True, **kw)).double().train()
    if lipschitz:
        update_norm_estimates([m for m in blk.modules() if hasattr(m, "power_vector")], 5)
    with torch.no_grad():
        for name, p in blk.named_parameters():
            if "gn" in name:
                p.uniform_(-0.9, 0.9)
    blk.drop.reset_mask(3, 8, torch.device("cpu"), torch.float64)
    z = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    inj = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True) if with_injection else None
    out, ref = blk(z, inj), formula(blk, z, inj)
    assert float((out - ref).detach().norm() / ref.detach().norm()) < 1e-13
    w = torch.randn_like(ref)
    inputs = [z] + ([inj] if with_injection else []) + list(blk.parameters())
    got = torch.autograd.grad((out * w).sum(), inputs, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum(), inputs, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if b is not None:
            assert float((a - b).norm()) <= 1e-12 * float(b.norm()) + 1e-15
    zero = torch.zeros_like(z)
    with torch.no_grad():
        assert float((blk.forward_at_zero(zero, inj) - formula(blk, zero, inj)).norm()) <= 1e-13 * float(ref.norm())
