"""The original MDEQ recipe's unrolled warm-up (locuslab's PRETRAIN_STEPS / NUM_LAYERS): f applied
unrolled_layers times from 0 as an explicit network for the first unrolled_warmup_steps optimiser steps
(training and evaluation alike), DEQ mode afterwards; the step count is saved with the weights."""
import pytest
import torch
from torch.nn import functional as F

from lmdeq.models import mdeq
from lmdeq.models.presets import original_warmup_steps

from .tiny import TINY2, original_solves


def _model(**kw):
    torch.manual_seed(0)
    return mdeq("cifar10-small", lipschitz=False, **TINY2, **original_solves(5, 5), **kw)


def _unrolled_logits(model, x, layers):
    f, z = model.fixed_point_problem(x)
    for _ in range(layers):
        z = f(z)
    return model.head(z)


def test_warmup_is_the_unrolled_network_then_a_deq():
    model = _model(unrolled_warmup_steps=2, unrolled_layers=3).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.in_unrolled_warmup()
    with torch.no_grad():
        assert torch.allclose(model(x), _unrolled_logits(model, x, 3), rtol=1e-5, atol=1e-6)
        assert model.last_info["f_nstep"] == 3
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):   # the warm-up steps: gradients flow through the unrolled layers
        opt.zero_grad()
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        assert model.last_info["b_nstep"] == 3
        assert all(p.grad is not None for p in model.cell.parameters())
        opt.step()
        model.constraint_step()
    assert not model.in_unrolled_warmup() and int(model.optimizer_steps) == 2
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()   # DEQ mode: solver counts, implicit backward
    # Broyden with max_iter=5 makes at most 5 updates: 6 f-evaluations with g(x0)
    assert model.last_info["f_nstep"] <= 6 and 1 <= model.last_info["b_nstep"] <= 6
    clone = _model(unrolled_warmup_steps=2, unrolled_layers=3)
    assert clone.in_unrolled_warmup()
    clone.load_state_dict(model.state_dict())
    assert not clone.in_unrolled_warmup()


def test_no_warmup_by_default_and_no_extra_state():
    model = _model()
    assert not model.in_unrolled_warmup() and "optimizer_steps" not in model.state_dict()


def test_warmup_scaled_to_the_schedule():
    assert original_warmup_steps("cifar10-small", 19550) == 3000        # locuslab cls_mdeq_TINY.yaml
    assert original_warmup_steps("cifar10-small", 4 * 157) == round(4 * 157 * 3000 / 19550)
    assert original_warmup_steps("cifar10-large", 220 * 391) == 20000   # cls_mdeq_LARGE.yaml
    with pytest.raises(ValueError, match="total_steps"):
        original_warmup_steps("cifar10-small", 0)
    with pytest.raises(ValueError, match="unrolled_warmup_steps"):
        _model(unrolled_warmup_steps=-1)
    with pytest.raises(ValueError, match="unrolled_layers"):
        _model(unrolled_layers=0)
