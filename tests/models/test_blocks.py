"""The public certified blocks and lipschitz_bound: every rule is an upper bound on the dense Jacobian's norm of
small instances (at random points, also with adversarial weights: random search and gradient ascent on ||J||/L);
the compositions compose exactly as documented; anything without a rule is refused, naming it; a user's rule can be
registered; one refresh call per kind covers every capped layer of any tree."""
import math

import pytest
import torch
from torch import nn

from lmdeq import ops
from lmdeq.errors import UnsupportedError
from lmdeq.models import (AddInput, CappedConv2d, CappedLinear, ConvexResidual, MeanOnlyGroupNorm, Parallel, Residual,
                          ScaledAbs, ScaledLeakyReLU, ScaledReLU, ScaledTanh, Sequential, lipschitz_bound,
                          refresh_norm_estimates, register_lipschitz_rule)
from lmdeq.models import lipschitz as lipschitz_module
from lmdeq.models.composed import LinearChain

from .tiny import dense_conv_norm


def _dense_norm(fn, x):
    """||J_fn(x)||_2 from the dense Jacobian (float64), x one sample."""
    jac = torch.autograd.functional.jacobian(fn, x)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2))


def _randomise_(module, scale=1.0, gen=None):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _f(C=4, H=4, cap=0.9):
    """A small f(z, x) of every composition: residual chains, a parallel sum, the injection, a linear chain."""
    conv = lambda c_in, c_out, stride=1: CappedConv2d(c_in, c_out, 3, stride=stride, input_size=(H, H), cap=cap,
                                                      margin=0.05)
    return Sequential(
        ConvexResidual(Sequential(conv(C, 2 * C), MeanOnlyGroupNorm(2, 2 * C, gamma_max=1.5), ScaledReLU(0.7),
                                  conv(2 * C, C)), alpha=0.6),
        AddInput(),
        Parallel(Sequential(MeanOnlyGroupNorm(2, C), ScaledTanh(0.9)),
                 Residual(Sequential(CappedConv2d(C, C, 1, cap=0.3, margin=0.05), ScaledLeakyReLU(0.5, -0.7))),
                 weights=[0.5, -0.25]),
        LinearChain(MeanOnlyGroupNorm(2, C), conv(C, C)),
        ScaledAbs(0.8),
    ).double()


def test_each_leaf_rule_bounds_its_dense_jacobian():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    layers = [
        (CappedConv2d(3, 5, 3, input_size=(5, 6), cap=0.8, margin=0.05), (1, 3, 5, 6)),
        (CappedConv2d(4, 3, 3, stride=2, input_size=(6, 5), cap=5.0, margin=0.05), (1, 4, 6, 5)),
        (CappedConv2d(4, 6, 1, cap=0.5, margin=0.05, weight_norm=True), (1, 4, 3, 3)),
        (CappedLinear(7, 5, cap=0.6, margin=0.05), (1, 7)),
        (CappedLinear(5, 9, cap=50.0, margin=0.05, weight_norm=True), (1, 5)),
        (MeanOnlyGroupNorm(2, 6, gamma_max=0.7), (1, 6, 3, 2)),
        (ScaledReLU(0.3), (1, 12)), (ScaledTanh(1.7), (1, 12)), (ScaledLeakyReLU(0.5, -1.0), (1, 12)),
        (ScaledAbs(2.0), (1, 12)), (nn.Tanh(), (1, 12)), (nn.LeakyReLU(-1.5), (1, 12)), (nn.ELU(alpha=2.0), (1, 12)),
        (nn.Sigmoid(), (1, 12)), (nn.Softplus(beta=3.0), (1, 12)), (nn.Upsample(scale_factor=2), (1, 2, 3, 3)),
    ]
    for layer, shape in layers:
        layer = layer.double()
        _randomise_(layer, 2.0, gen)
        refresh_norm_estimates(layer, 200)
        bound = lipschitz_bound(layer)
        for _ in range(3):
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
            measured = _dense_norm(layer, x)
            assert measured <= bound * (1 + 1e-9), f"{layer}: ||J|| = {measured:.5f} > bound {bound:.5f}"
    # the capped layers' effective norms sit at the cap when their weights are large
    conv = CappedConv2d(3, 4, 3, input_size=(5, 5), cap=0.8, margin=0.05).double()
    _randomise_(conv, 5.0, gen)
    refresh_norm_estimates(conv, 300)
    assert lipschitz_bound(conv) == pytest.approx(0.8)
    assert dense_conv_norm(conv.effective_weight(), (1, 3, 5, 5), 1) <= 0.8


def test_compositions_compose_as_documented():
    torch.manual_seed(1)
    f = _f()
    refresh_norm_estimates(f, 100)
    res, _, par, chain, act = f
    inner = res.g
    expect_inner = math.prod(lipschitz_bound(m) for m in inner)
    assert lipschitz_bound(inner) == pytest.approx(expect_inner)
    assert lipschitz_bound(res) == pytest.approx(0.4 + 0.6 * expect_inner)
    b0, b1 = par.branches
    assert lipschitz_bound(b1) == pytest.approx(1.0 + lipschitz_bound(b1.g))
    assert lipschitz_bound(par) == pytest.approx(0.5 * lipschitz_bound(b0) + 0.25 * lipschitz_bound(b1))
    assert lipschitz_bound(chain) <= lipschitz_bound(chain.layers[0]) * lipschitz_bound(chain.layers[1]) + 1e-12
    total = lipschitz_bound(res) * 1.0 * lipschitz_bound(par) * lipschitz_bound(chain) * 0.8
    assert lipschitz_bound(f) == pytest.approx(total)


@pytest.mark.parametrize("weight_scale", [0.3, 3.0, 30.0])
def test_the_composed_f_never_exceeds_its_bound_random_search(weight_scale):
    gen = torch.Generator().manual_seed(2)
    worst = 0.0
    for trial in range(4):
        torch.manual_seed(trial)
        f = _f()
        _randomise_(f, weight_scale, gen)
        refresh_norm_estimates(f, 100)
        bound = lipschitz_bound(f)
        x = torch.randn(1, 4, 4, 4, generator=gen, dtype=torch.float64)
        z = 3.0 * torch.randn(1, 4, 4, 4, generator=gen, dtype=torch.float64)
        ratio = _dense_norm(lambda t: f(t, x), z) / bound
        worst = max(worst, ratio)
    assert worst <= 1.0 + 1e-9


def test_gradient_ascent_on_the_ratio_stays_below_one():
    """Adversarial weights: ascend ||J_f(z)|| (the power-iteration direction's gain) over the weights and the point,
    re-estimating the norms after every step as training would; the dense ||J|| / L never exceeds 1."""
    torch.manual_seed(3)
    f = _f(cap=2.0)
    refresh_norm_estimates(f, 100)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 4, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(1, 4, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam(list(f.parameters()) + [z], lr=0.05)
    ratios = []
    for _ in range(15):
        with torch.no_grad():
            jac = torch.autograd.functional.jacobian(lambda t: f(t, x), z.detach()).reshape(z.numel(), z.numel())
            _, _, vh = torch.linalg.svd(jac)
        v = vh[0].reshape(z.shape)
        _, jv = torch.func.jvp(lambda t: f(t, x), (z,), (v,))
        opt.zero_grad()
        (-jv.norm()).backward()
        opt.step()
        for m in f.modules():   # the upkeep after a step: gamma projection and fresh estimates
            if isinstance(m, MeanOnlyGroupNorm):
                m.project_()
        refresh_norm_estimates(f, 30)
        bound = lipschitz_bound(f)
        ratios.append(_dense_norm(lambda t: f(t, x), z.detach()) / bound)
    assert max(ratios) <= 1.0 + 1e-9, max(ratios)
    assert max(ratios) > 0.05   # the ascent did push the Jacobian up against the bound


@pytest.mark.parametrize("module,needle", [
    (nn.Conv2d(2, 2, 3), "CappedConv2d"),
    (nn.Linear(2, 2), "CappedLinear"),
    (nn.BatchNorm2d(2), "MeanOnlyGroupNorm"),
    (nn.GroupNorm(1, 2), "MeanOnlyGroupNorm"),
    (nn.MultiheadAttention(4, 2), "attention is not globally Lipschitz"),
    (nn.Dropout(0.1), "new mask at every call"),
    (nn.GELU(), "no rule is registered"),
])
def test_uncertifiable_modules_are_refused_by_name(module, needle):
    f = Sequential(ConvexResidual(Sequential(nn.Identity(), module)), AddInput())
    with pytest.raises(UnsupportedError, match=rf"cannot certify '0\.g\.1' \(torch\.nn\.modules\..*\).*{needle}"):
        lipschitz_bound(f)


def test_a_users_module_needs_a_registered_rule_and_subclasses_do_not_inherit_a_forward_they_change():
    class Halve(nn.Module):
        def forward(self, z):
            return 0.5 * z

    class Doubled(ScaledTanh):   # overrides forward: the base's rule does not describe it
        def forward(self, z):
            return 2.0 * super().forward(z)

    class Renamed(ScaledTanh):   # keeps forward: the base's rule holds
        pass

    f = Sequential(Halve(), AddInput())
    with pytest.raises(UnsupportedError, match=r"cannot certify '0' \(.*Halve\) in Sequential: no Lipschitz rule"):
        lipschitz_bound(f)
    with pytest.raises(UnsupportedError, match="Doubled"):
        lipschitz_bound(Doubled(0.5))
    assert lipschitz_bound(Renamed(0.5)) == 0.5
    try:
        register_lipschitz_rule(Halve)(lambda m, bound: 0.5)
        assert lipschitz_bound(f) == 0.5
    finally:
        lipschitz_module.LIPSCHITZ_RULES.pop(Halve, None)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_lipschitz_rule(int)


def test_unbounded_layers_are_named_unless_allowed():
    f = Sequential(CappedConv2d(2, 2, 1), AddInput())   # no cap
    with pytest.raises(UnsupportedError, match=r"no finite bound: '0' \(CappedConv2d\): it has no cap"):
        lipschitz_bound(f)
    assert lipschitz_bound(f, allow_unbounded=True) == math.inf
    with pytest.raises(UnsupportedError, match="only nearest upsampling"):
        lipschitz_bound(nn.Upsample(scale_factor=2, mode="bilinear"))


def test_worst_case_uses_the_gamma_cap_and_trainings_dropout():
    from lmdeq.models.cell_parts import VariationalDropout2d

    norm = MeanOnlyGroupNorm(2, 4, gamma_max=0.8)
    with torch.no_grad():
        norm.weight.fill_(0.25)
    drop = VariationalDropout2d(0.5).eval()
    f = Sequential(norm, drop)
    assert lipschitz_bound(f) == pytest.approx(0.25)
    assert lipschitz_bound(f, worst_case=True) == pytest.approx(0.8 * 2.0)


def test_refresh_collects_every_capped_layer_of_any_tree_in_one_call_per_kind(monkeypatch):
    torch.manual_seed(5)
    f = Sequential(_f(), CappedLinear(4, 4, cap=1.0), Parallel(CappedConv2d(4, 4, 3, input_size=(4, 4), cap=1.0)))
    f.double()
    calls = {"conv": 0, "matrix": 0}
    real_conv, real_mat = ops.conv_power_iteration, ops.power_iteration_matrices

    def conv(*a, **k):
        calls["conv"] += 1
        return real_conv(*a, **k)

    def mat(*a, **k):
        calls["matrix"] += 1
        return real_mat(*a, **k)

    monkeypatch.setattr(ops, "conv_power_iteration", conv)
    monkeypatch.setattr(ops, "power_iteration_matrices", mat)
    refresh_norm_estimates(f, 3)
    assert calls == {"conv": 1, "matrix": 1}
    capped = [m for m in f.modules() if isinstance(m, (CappedConv2d, CappedLinear)) and m.cap is not None]
    assert len(capped) == 6 and all(not m.estimate_is_stale() for m in capped)
    f[1].float()   # layers of two dtypes: one call per kind and dtype
    refresh_norm_estimates(f, 3)
    assert calls == {"conv": 2, "matrix": 3}


def test_capped_linear_estimate_matches_the_matrix_norm_and_the_cap_holds():
    torch.manual_seed(6)
    lin = CappedLinear(6, 4, cap=0.5, margin=0.05).double()
    _randomise_(lin, 3.0)
    refresh_norm_estimates(lin, 100)
    exact = float(torch.linalg.matrix_norm(lin.unscaled_weight().detach(), ord=2))
    assert float(lin.sigma) == pytest.approx(exact, rel=1e-9)
    assert float(torch.linalg.matrix_norm(lin.effective_weight().detach(), ord=2)) <= 0.5
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.allclose(lin(x), x @ lin.effective_weight().T + lin.bias)
    with pytest.raises(ValueError, match="cap must be a finite number > 0"):
        CappedLinear(2, 2, cap=0.0)
