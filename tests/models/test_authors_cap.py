"""constraint='released': the Lipschitz-MDEQ authors' post-step conv cap as released (baseline (b)), and
constraint='none'. The reference here re-derives, for each conv, what the released code leaves in the
weight the next forward pass uses: one power step on the reshaped kernel, the division where
sigma > cap, and nothing for the weight-normed convs of f (weight norm recomputes them from g and v)."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lmdeq.models import APRIORI_SOLVES, AUTHORS_SOLVER, mdeq
from lmdeq.models.authors_cap import BUFFER
from lmdeq.models.capped import CappedConv2d

from .tiny import TINY3, lipschitz_solves


def _convs(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, CappedConv2d))]


def _forward_weight(conv):
    """The weight the forward pass uses (weight norm applied), float64."""
    if isinstance(conv, CappedConv2d):
        return conv.effective_weight().detach().double()
    return conv.weight.detach().double()


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _released_step(weight, u, cap):
    """One released power step on reshape(W) from u, and the weight it leaves (float64)."""
    mat = weight.reshape(weight.shape[0], -1)
    v = mat.t() @ u
    v = v / v.norm()
    u_new = mat @ v
    u_new = u_new / u_new.norm()
    sigma = float(u_new @ (mat @ v))
    return sigma, weight / max(1.0, sigma / cap), u_new


def _released(**kw):
    return mdeq("cifar10-small", constraint="released", **TINY3, **AUTHORS_SOLVER, **kw)


def test_released_cap_matches_the_reference_on_every_conv():
    torch.manual_seed(0)
    model = _released(conv_cap=2.0)
    with torch.no_grad():   # push every conv's reshaped norm above the cap: weight_g, weight, stem and head
        for _, conv in _convs(model):
            (conv.weight_g if getattr(conv, "weight_norm", False) else conv.weight).mul_(300.0)
    convs = _convs(model)
    before = {name: (_forward_weight(c), getattr(c, BUFFER).double().clone()) for name, c in convs}
    assert all(float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), 2)) > 2.0 for w, _ in before.values())
    model.constraint_step()
    weight_normed = 0
    for name, conv in convs:
        w, u = before[name]
        sigma, expected, u_new = _released_step(w, u, 2.0)
        assert sigma > 2.0
        after = _forward_weight(conv)
        if isinstance(conv, CappedConv2d) and conv.weight_norm:
            weight_normed += 1
            assert torch.equal(after, w), name          # undone by weight norm, as released
        else:
            # The model runs the step in float32: allow 2x the error of the same step run in float32 (as the
            # op tests do), plus float32's floor, normwise; never elementwise with atol=0.
            _, expected32, _ = _released_step(w.float(), u.float(), 2.0)
            tol = 2e-6 + 2.0 * _rel(expected32, expected)
            assert _rel(after, expected) <= tol, (name, _rel(after, expected), tol)
        assert torch.allclose(getattr(conv, BUFFER).double(), u_new, rtol=1e-4, atol=1e-6), name
    # 3 branches: two convs per residual block and one post-fusion conv per branch are weight-normed.
    assert weight_normed == 9
    assert any(name.startswith("stem") for name, _ in convs) and any(name.startswith("head") for name, _ in convs)


def test_released_cap_leaves_small_convs_alone_and_persists_u():
    torch.manual_seed(1)
    model = _released(conv_cap=1e6)
    weights = {n: _forward_weight(c) for n, c in _convs(model)}
    us = {n: getattr(c, BUFFER).clone() for n, c in _convs(model)}
    model.constraint_step()
    for n, c in _convs(model):
        assert torch.equal(_forward_weight(c), weights[n])
        assert not torch.equal(getattr(c, BUFFER), us[n])     # the power step still ran
    clone = _released(conv_cap=1e6)
    clone.load_state_dict(model.state_dict())
    for (n, a), (_, b) in zip(_convs(model), _convs(clone)):
        assert torch.equal(getattr(a, BUFFER), getattr(b, BUFFER)), n


@pytest.mark.parametrize("constraint", ["released", "none"])
def test_uncertified_constraints_clamp_gammas_after_the_step_and_certify_nothing(constraint):
    torch.manual_seed(2)
    model = mdeq("cifar10-small", constraint=constraint, **TINY3, **lipschitz_solves(6, 6))
    assert math.isinf(model.lipschitz_bound())
    conv = model.cell.convs()[0]
    assert conv.cap is None and torch.equal(conv.effective_weight(), conv.unscaled_weight())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    norms = model.cell.gamma_clipped_norms()
    with torch.no_grad():
        norms[0].weight.fill_(1.5)
    model.constraint_step()
    assert float(norms[0].weight.detach().max()) == 1.0
    assert model.last_info["b_nstep"] >= 1


def test_uncertified_constraints_have_no_apriori_count():
    with pytest.raises(ValueError, match="certifies no bound"):
        mdeq("cifar10-small", constraint="none")     # max_iter=Apriori(): the a-priori count
    with pytest.raises(ValueError, match="certifies no bound"):
        mdeq("cifar10-small", constraint="released", **APRIORI_SOLVES)


def test_bad_constraint():
    with pytest.raises(ValueError, match="constraint must be one of"):
        mdeq("cifar10-small", constraint="authors")
    with pytest.raises(ValueError, match="only apply to the Lipschitz variant"):
        mdeq("cifar10-small", lipschitz=False, constraint="released")
