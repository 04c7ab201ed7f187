"""Forward shapes, input checks, last_info, and one training step (forward, backward, optimiser step,
constraint upkeep) of each variant and solve mode."""
import contextlib
import math

import pytest
import torch
from torch.nn import functional as F

from lmdeq.models import APRIORI_SOLVES, AUTHORS_SOLVER, mdeq
from lmdeq.solvers import adjoint_apriori_iterations, apriori_iterations

from .tiny import TINY2, TINY3, original_solves

INFO_KEYS = {"f_nstep", "f_residual", "b_nstep", "b_residual", "converged"}


@pytest.mark.parametrize("lipschitz", [False, True])
@pytest.mark.parametrize("tiny", [TINY2, TINY3], ids=["2br", "3br"])
def test_output_shapes_batch_one_and_non_contiguous_input(lipschitz, tiny):
    torch.manual_seed(0)
    extra = {} if lipschitz else original_solves(4)
    model = mdeq("cifar10-small", lipschitz=lipschitz, **tiny, **extra).eval()
    x = torch.randn(3, 32, 32, 3).permute(0, 3, 1, 2)        # (B, 3, 32, 32), non-contiguous
    assert not x.is_contiguous()
    with torch.no_grad():
        out = model(x)
        ref = model(x.contiguous())
        one = model(x[:1])
    assert out.shape == (3, 10) and one.shape == (1, 10)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    f, z0 = model.fixed_point_problem(x)
    shapes = [tuple(z.shape) for z in z0]
    channels = tiny["channels"]
    assert shapes == [(3, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate(channels)]
    assert all(float(z.abs().max()) == 0.0 for z in z0)
    fz = f(z0)
    assert [tuple(t.shape) for t in fz] == shapes


def test_large_preset_forward_batch_one():
    torch.manual_seed(1)
    model = mdeq("cifar10-large", init_power_iters=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    assert model.last_info["converged"] == 1.0


@pytest.mark.parametrize("bad,exc,match", [
    (torch.randn(2, 3, 28, 28), ValueError, r"\(B, 3, 32, 32\)"),
    (torch.randn(2, 1, 32, 32), ValueError, r"\(B, 3, 32, 32\)"),
    (torch.randn(3, 32, 32), ValueError, r"\(B, 3, 32, 32\)"),
    (torch.randn(0, 3, 32, 32), ValueError, "B >= 1"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating"),
    ([[0.0]], TypeError, "tensor"),
])
def test_bad_input_is_a_clear_error(bad, exc, match):
    model = mdeq("cifar10-small", **TINY2, init_power_iters=1)
    with pytest.raises(exc, match=match):
        model(bad)
    with pytest.raises(exc, match=match):
        model.fixed_point_problem(bad)


@pytest.mark.parametrize("variant", [
    dict(lipschitz=False, **original_solves(6, 6)),
    dict(lipschitz=True),
    dict(lipschitz=True, **APRIORI_SOLVES),
    dict(lipschitz=True, weight_norm=False),
    dict(lipschitz=True, **AUTHORS_SOLVER),
], ids=["original", "lipschitz", "lipschitz-apriori", "lipschitz-no-wnorm", "lipschitz-authors-solver"])
def test_training_step(variant):
    torch.manual_seed(2)
    model = mdeq("cifar10-small", **TINY2, **variant)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    cell_grads = [g for n, g in grads.items() if n.startswith("cell.") and g is not None]
    assert cell_grads and all(torch.isfinite(g).all() for g in cell_grads)
    assert any(float(g.abs().max()) > 0 for g in cell_grads)
    info = model.last_info
    assert INFO_KEYS <= set(info) and all(isinstance(info[k], (int, float)) for k in INFO_KEYS)
    assert info["f_nstep"] >= 1 and info["b_nstep"] >= 1 and math.isfinite(info["b_residual"])
    opt.step()
    model.constraint_step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith("cell."))
    if variant["lipschitz"]:
        cap = model.config["conv_cap"]
        assert all(float(c.lipschitz()) <= cap for c in model.cell.convs())
        assert all(float(g.weight.detach().abs().max()) <= model.config["gamma_max"] for g in model.cell.gamma_clipped_norms())
        assert not any(c.estimate_is_stale() for c in model.cell.convs())
        assert model.lipschitz_bound() < 1.0
        if variant.get("forward") is APRIORI_SOLVES["forward"]:   # exactly the a-priori count, forward and backward
            bound = info["lipschitz_bound"]
            f_tol, b_tol = model.config["forward"]["tol"], model.config["backward"]["solver"]["tol"]
            assert (f_tol, b_tol) == (1e-3, 1e-3)
            assert info["f_nstep"] == apriori_iterations(bound, f_tol)
            assert info["b_nstep"] == adjoint_apriori_iterations(bound, b_tol)
    else:
        assert model.lipschitz_bound() == math.inf
    loss2 = F.cross_entropy(model(x), y)      # a second step runs after the upkeep
    assert torch.isfinite(loss2)


def test_last_info_before_backward_and_in_eval():
    model = mdeq("cifar10-small", **TINY2, init_power_iters=1).eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    info = model.last_info
    assert info["b_nstep"] == 0 and math.isnan(info["b_residual"])
    assert 0.0 < info["lipschitz_bound"] < 1.0 and info["converged"] == 1.0


def test_missed_constraint_step_is_caught_before_the_next_forward():
    # The cap sits on the effective weight: an optimiser-like in-place edit without constraint_step
    # is detected (parameter versions) and re-estimated before f is used again.
    torch.manual_seed(3)
    model = mdeq("cifar10-small", **TINY2).eval()
    conv = model.cell.blocks[0].conv1
    with torch.no_grad():
        conv.weight_g.mul_(50.0)
    assert conv.estimate_is_stale()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert not conv.estimate_is_stale()
    assert float(conv.lipschitz()) == pytest.approx(model.config["conv_cap"])


def test_dropout_mask_is_fixed_within_a_forward_pass():
    torch.manual_seed(4)
    model = mdeq("cifar10-small", **TINY2, dropout=0.5, init_power_iters=1).train()
    f, z0 = model.fixed_point_problem(torch.randn(2, 3, 32, 32))
    z = [torch.randn_like(t) for t in z0]
    with torch.no_grad():
        a, b = f(z), f(z)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_frozen_weights_change_neither_outputs_nor_gradients(monkeypatch):
    # The solve computes each effective weight once; the result must equal recomputing it per call.
    torch.manual_seed(5)
    model = mdeq("cifar10-small", **TINY2).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_frozen, grads_frozen = run()
    monkeypatch.setattr(type(model.cell), "frozen_weights", lambda self: contextlib.nullcontext())
    out_plain, grads_plain = run()
    assert torch.allclose(out_frozen, out_plain, rtol=1e-12, atol=1e-14)
    assert grads_frozen.keys() == grads_plain.keys() and any(n.startswith("cell.") for n in grads_plain)
    for name, g in grads_plain.items():
        assert (grads_frozen[name] - g).norm() <= 1e-10 * (g.norm() + 1e-30), name


@pytest.mark.parametrize("lipschitz", [True, False], ids=["lipschitz", "original"])
def test_channels_last_model_matches_and_keeps_the_format(lipschitz):
    # A channels_last model and input: same logits and gradients as NCHW, and the solver state and f's
    # outputs stay channels_last (no layout copies inside the solve).
    torch.manual_seed(3)
    model = mdeq("cifar10-small", lipschitz=lipschitz, **TINY2).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(4)  # the same dropout masks in both passes
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(4)
    out = model(xc)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert float((out - ref).detach().norm() / ref.detach().norm()) < 1e-10
    g, r = torch.cat([t.flatten() for t in grads]), torch.cat([t.flatten() for t in ref_grads])
    assert float((g - r).norm() / r.norm()) < 1e-10
    if lipschitz:   # torch's GroupNorm (original) may return NCHW; lmdeq's mean-only GroupNorm keeps the format
        f, z0 = model.fixed_point_problem(xc)
        with torch.no_grad():
            fz = f(z0)
        assert all(t.is_contiguous(memory_format=torch.channels_last) for t in list(z0) + list(fz))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("norm_type", ["mean-only", "standard"])
def test_group_norm_scales_fold_as_documented(norm_type, affine):
    # norm(x, gamma_scale=a, beta_scale=b) = a * gamma * normalised(x) + b * beta, the identity the cell uses
    # to fold the activation slope and fusion weights into its GroupNorms.
    from lmdeq.models.normalization import group_norm

    torch.manual_seed(5)
    norm = group_norm(norm_type == "mean-only", 4, 8, affine=affine, gamma_max=1.5).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(-2.0, 2.0)
            norm.bias.normal_()
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        plain = norm(x)
        beta = norm.bias.reshape(1, 8, 1, 1) if affine else 0.0
        expected = 0.4 * (plain - beta) + 0.7 * beta
        assert torch.allclose(norm(x, gamma_scale=0.4, beta_scale=0.7), expected, atol=1e-12)
