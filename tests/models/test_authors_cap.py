"""constraint='authors': the authors' post-step reshaped-matrix cap, kept for the speed-up comparison."""
import math

import pytest
import torch

from lmdeq.models import AUTHORS_SOLVER, mdeq


def _reshaped_norms(model):
    return torch.stack([torch.linalg.matrix_norm(c.unscaled_weight().detach().reshape(c.out_channels, -1), 2)
                        for c in model.cell.convs()])


@pytest.mark.parametrize("weight_norm", [True, False])
def test_constraint_step_caps_reshaped_matrix_norms(weight_norm):
    torch.manual_seed(0)
    model = mdeq("cifar10-small", constraint="authors", weight_norm=weight_norm, power_iters=50, **AUTHORS_SOLVER)
    with torch.no_grad():
        for conv in model.cell.convs():
            (conv.weight_g if conv.weight_norm else conv.weight).mul_(40.0)
    assert float(_reshaped_norms(model).max()) > 2.0
    model.constraint_step()
    norms = _reshaped_norms(model)
    # Power iteration estimates sigma from below, so the cap holds up to the estimate's error.
    assert float(norms.max()) <= 2.0 * 1.02
    assert float(norms.max()) >= 2.0 * 0.98


def test_authors_constraint_certifies_nothing_and_trains():
    torch.manual_seed(1)
    model = mdeq("cifar10-small", constraint="authors", **AUTHORS_SOLVER)
    assert math.isinf(model.lipschitz_bound())
    # The forward pass uses the stored weight as is (no operator-norm parametrisation).
    conv = model.cell.convs()[0]
    assert conv.cap is None and torch.equal(conv.effective_weight(), conv.unscaled_weight())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    model.constraint_step()
    assert model.last_info["b_nstep"] >= 1


def test_bad_constraint():
    with pytest.raises(ValueError, match="constraint must be one of"):
        mdeq("cifar10-small", constraint="reshaped")
    with pytest.raises(ValueError, match="only apply to the Lipschitz variant"):
        mdeq("cifar10-small", lipschitz=False, constraint="authors")
