"""The convolutions on the solved state z* (the blocks' conv1 in the tracked evaluation f(z*)) skip dL/dz*
once the adjoint solve is done: the same logits and parameter gradients as plain convolutions (float64),
the input gradient still computed for the adjoint's products, and a repeated backward pass
(retain_graph) solving the adjoint again."""
import pytest
import torch
from torch.nn import functional as F

from lmdeq.models import capped, mdeq

from .tiny import TINY2, TINY3


def _step(model, x, seed=5, retain=False):
    torch.manual_seed(seed)
    model.zero_grad()
    out = model(x)
    loss = out.square().sum()
    loss.backward(retain_graph=retain)
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], loss


@pytest.mark.parametrize("tiny", [TINY2, TINY3], ids=["2br", "3br"])
def test_training_step_unchanged_against_plain_convolutions(tiny, monkeypatch):
    torch.manual_seed(0)
    model = mdeq("cifar10-small", **tiny, dropout=0.2, init_power_iters=2).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out, grads, _ = _step(model, x)
    monkeypatch.setattr(capped._StateConv2d, "apply",
                        staticmethod(lambda x, w, stride, padding: F.conv2d(x, w, stride=stride, padding=padding)))
    out_ref, grads_ref, _ = _step(model, x)
    assert float((out - out_ref).norm() / out_ref.norm()) < 1e-12
    for a, b in zip(grads, grads_ref):
        assert float((a - b).norm()) <= 1e-10 * float(b.norm()) + 1e-14


def test_the_input_gradient_is_computed_for_the_adjoint_and_skipped_after_it(monkeypatch):
    torch.manual_seed(1)
    model = mdeq("cifar10-small", **TINY2, init_power_iters=2).double().train()
    seen = []
    real = capped.adjoint_done
    monkeypatch.setattr(capped, "adjoint_done", lambda t: seen.append(real(t)) or seen[-1])
    _step(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))
    b_evals = model.last_info["b_nstep"]
    blocks = len(model.cell.blocks)
    # each adjoint product asks every block's conv1 for dL/dz* (not done), the parameter pass does not
    assert seen == [False] * (b_evals * blocks) + [True] * blocks


def test_a_repeated_backward_pass_solves_the_adjoint_again():
    torch.manual_seed(2)
    model = mdeq("cifar10-small", **TINY2, init_power_iters=2).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _, once, _ = _step(model, x)
    torch.manual_seed(5)
    model.zero_grad()
    loss = model(x).square().sum()
    loss.backward(retain_graph=True)
    loss.backward()
    twice = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(twice, once):
        assert float((a - 2 * b).norm()) <= 1e-10 * float(b.norm()) + 1e-14


def test_state_conv_derivatives_under_function_transforms():
    torch.manual_seed(3)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    v, u = torch.randn_like(x), torch.randn(2, 6, 5, 5, dtype=torch.float64)
    fn = lambda t: capped._StateConv2d.apply(t, w, 1, 1)
    ref = lambda t: F.conv2d(t, w, padding=1)
    assert torch.allclose(torch.func.jvp(fn, (x,), (v,))[1], torch.func.jvp(ref, (x,), (v,))[1], rtol=1e-13)
    assert torch.allclose(torch.func.vjp(fn, x)[1](u)[0], torch.func.vjp(ref, x)[1](u)[0], rtol=1e-13)
    xs = x.clone().requires_grad_()
    ws = w.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: capped._StateConv2d.apply(a, b, 2, 1), (xs, ws))
