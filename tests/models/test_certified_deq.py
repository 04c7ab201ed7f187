"""CertifiedDEQ: a DEQ of certified blocks solved at the counts of its bound (the MDEQ classifier's solve path), and
iteration budgets as certified settings (L* from the count formula, enforced by scaling the caps at init and after
every optimiser step, exact on resume, reachable through --set), with their errors."""
import pytest
import torch
from torch import nn

from lmdeq.cuda_graphs import GraphCache
from lmdeq.errors import ConfigError, UnsupportedError
from lmdeq.models import (APRIORI_SOLVES, AddInput, CappedConv2d, CertifiedDEQ, ConvexResidual, MeanOnlyGroupNorm,
                          ScaledReLU, Sequential, mdeq, resolve_config)
from lmdeq.models.budget import bound_for_budget, reachable_tol
from lmdeq.models.constraints import capped_layers
from lmdeq.models.certified import APRIORI_FORWARD
from lmdeq.models.solves import NotContractiveError
from lmdeq.solvers import Apriori, FixedPoint, adjoint_apriori_iterations, apriori_iterations
from lmdeq import Implicit, JFB, deq_solve
from lmdeq.deq import jacobian_norm

from ..deq.graph_double import RerunCall
from .tiny import TINY2, scale_weights_

C, H = 4, 6


def _f(cap=1.0, alpha=0.5, s=0.5):
    conv = lambda a, b: CappedConv2d(a, b, 3, input_size=(H, H), cap=cap, margin=0.05)
    return Sequential(ConvexResidual(Sequential(conv(C, 2 * C), MeanOnlyGroupNorm(2, 2 * C), ScaledReLU(s),
                                                conv(2 * C, C)), alpha=alpha),
                      AddInput(), MeanOnlyGroupNorm(2, C), ScaledReLU(0.9)).double()


def _randomise_(module, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _rel_residuals(f, z, x):
    fz = f(z, x)
    return ((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1))


def test_a_deq_of_blocks_runs_its_certified_counts_and_gets_the_implicit_gradient():
    torch.manual_seed(0)
    f = _f()
    _randomise_(f, 0.5, 1)
    deq = CertifiedDEQ(f)
    L = deq.lipschitz_bound()
    assert 0 < L < 1
    x = torch.randn(3, C, H, H, dtype=torch.float64, requires_grad=True)
    z = deq(x)
    info = deq.last_info
    assert info["f_nstep"] == apriori_iterations(L, 1e-3) and info["lipschitz_bound"] == L
    with torch.no_grad():
        assert float(_rel_residuals(f, z, x).max()) <= 1e-3   # the certificate, measured
    w = torch.randn_like(z)
    (gx,) = torch.autograd.grad((z * w).sum(), x)
    assert deq.last_info["b_nstep"] == adjoint_apriori_iterations(L, 1e-3)
    # against a tight solve and its implicit gradient
    tight = FixedPoint(max_iter=300, tol=1e-13, stop_mode="rel")
    z_ref, _ = deq_solve(lambda t: f(t, x), torch.zeros_like(x), solver=tight,
                         backward=Implicit(solver=FixedPoint(max_iter=300, tol=1e-13, stop_mode="rel")))
    (gx_ref,) = torch.autograd.grad((z_ref * w).sum(), x)
    assert float((z - z_ref).detach().norm() / z_ref.detach().norm()) < 3e-3
    assert float((gx - gx_ref).norm() / gx_ref.norm()) < 3e-3


def test_its_graphed_solve_equals_the_eager_one():
    torch.manual_seed(2)
    f = _f()
    _randomise_(f, 0.5, 3)
    graphed = CertifiedDEQ(f, injection=nn.Identity())
    graphed.graphs = GraphCache(call_type=RerunCall)
    eager = CertifiedDEQ(f, cuda_graphs=False)
    for seed in (4, 5):
        x = torch.randn(2, C, H, H, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(graphed(x), eager(x), rtol=1e-12, atol=1e-14)
    assert graphed.graphs.captures == 1 and graphed.graphs.replays == 2 and graphed.last_info["cuda_graph"]


def test_the_mdeq_classifier_solves_through_its_certified_deq():
    torch.manual_seed(3)
    model = mdeq("cifar10-small", **TINY2, **APRIORI_SOLVES)
    assert isinstance(model.deq, CertifiedDEQ) and model.deq.f is model.cell
    assert not any(k.startswith("deq.") for k in model.state_dict())   # the cell's keys stay cell.*
    assert model.graphs is model.deq.graphs
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert model.last_info == model.deq.last_info
    assert model.lipschitz_bound() == model.deq.lipschitz_bound()


def test_l_at_or_above_one_is_refused_naming_the_settings():
    with pytest.raises(NotContractiveError, match="L = .* is not < 1"):
        CertifiedDEQ(Sequential(ConvexResidual(ScaledReLU(3.0), alpha=0.5), AddInput()))
    CertifiedDEQ(Sequential(ConvexResidual(ScaledReLU(3.0), alpha=0.5), AddInput()),
                 forward=FixedPoint(max_iter=30, tol=1e-3, stop_mode="rel"),
                 backward=Implicit(solver=FixedPoint(max_iter=30, tol=1e-3, stop_mode="rel")))   # no count needed
    torch.manual_seed(4)
    model = mdeq("cifar10-small", **TINY2, **APRIORI_SOLVES, conv_cap=50.0)
    scale_weights_(model, conv_factor=1e3, gamma_factor=1.0)
    model.constraint_step(n_iter=30)
    with pytest.raises(NotContractiveError, match=r"is not < 1.*lower s, alpha, beta or conv_cap"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError):   # (NotContractiveError is also a RuntimeError, as the solvers' error was)
        model(torch.randn(1, 3, 32, 32))


def test_uncertifiable_f_is_refused_at_construction():
    with pytest.raises(UnsupportedError, match=r"cannot certify '0' \(torch\.nn\.modules\.conv\.Conv2d\)"):
        CertifiedDEQ(Sequential(nn.Conv2d(C, C, 3, padding=1), AddInput()))


# -- budgets ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adjoint", [False, True], ids=["forward", "adjoint"])
@pytest.mark.parametrize("tol,tau", [(1e-3, 1.0), (1e-5, 1.0), (1e-3, 0.8)])
def test_the_budget_bound_is_the_largest_within_the_count(adjoint, tol, tau):
    count = adjoint_apriori_iterations if adjoint else apriori_iterations
    solver = FixedPoint(max_iter=Apriori(), tol=tol, stop_mode="rel", tau=tau)
    for k in range(count(0.0, tol, tau), 12):
        L = bound_for_budget(k, solver, adjoint=adjoint)
        assert 0 < L < 1 and count(L, tol, tau) <= k
        assert count(min(L * (1 + 1e-9) + 1e-15, 0.999999), tol, tau) > k   # the largest (to bisection precision)


@pytest.mark.parametrize("k_f,k_b", [(3, 3), (2, None), (None, 2)])
def test_a_budget_holds_at_init_and_after_every_optimiser_step(k_f, k_b):
    torch.manual_seed(5)
    model = mdeq("cifar10-small", **TINY2, **APRIORI_SOLVES, forward_budget=k_f, backward_budget=k_b).double()
    limit = min(v for v in (bound_for_budget(k, FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel"),
                                             adjoint=side == "b") for side, k in (("f", k_f), ("b", k_b))
                            if k is not None))
    assert model.deq.budget.bound == limit
    scale_weights_(model, conv_factor=30.0, gamma_factor=4.0)   # adversarial: every conv far above its cap
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (2,), generator=gen)
    for step in range(2):
        model.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        info = model.last_info
        assert k_f is None or info["f_nstep"] <= k_f
        assert k_b is None or info["b_nstep"] <= k_b
        opt.step()
        model.constraint_step()
        for mode in (True, False):
            model.train(mode)
            L = model.lipschitz_bound()
            assert L <= limit
            if step == 1:
                f, z0 = model.fixed_point_problem(x[:1])
                point = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in z0]
                assert jacobian_norm(f, point, iters=6) <= L
    assert 0.0 < model.deq.budget.cap_scale < 1.0   # the caps were scaled down to meet it
    assert all(c.cap_scale == model.deq.budget.cap_scale for c in model.cell.convs())


def test_a_resumed_budgeted_model_recomputes_the_same_caps_and_logits():
    torch.manual_seed(7)
    model = mdeq("cifar10-small", **TINY2, **APRIORI_SOLVES, forward_budget=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
        model.constraint_step()
    model.eval()
    with torch.no_grad():
        before = model(x)
    state, config = model.state_dict(), model.config
    torch.manual_seed(99)   # a fresh process draws other vectors: the loaded buffers replace them
    resumed = mdeq(**config).eval()
    at_init = resumed.deq.budget.cap_scale
    resumed.load_state_dict(state)
    # The loaded estimates set the cap scale at once: every layer's own bound is the budgeted one before any solve.
    assert at_init != model.deq.budget.cap_scale
    assert all(c.cap_scale == model.deq.budget.cap_scale for c in resumed.cell.convs())
    assert resumed.cell.layerwise_bound() == model.cell.layerwise_bound()
    with torch.no_grad():
        after = resumed(x)
    assert torch.equal(before, after)
    assert resumed.deq.budget.cap_scale == model.deq.budget.cap_scale < 1.0
    assert resumed.lipschitz_bound() == model.lipschitz_bound()


def test_budgets_are_reachable_through_set():
    from lmdeq.app.flat_solves import model_arguments
    from lmdeq.app.train.cli import parse_override   # (the parser of `lmdeq train --set KEY=VALUE`)

    overrides = dict(parse_override(t) for t in ("forward_budget=4", "backward_budget=3", "solve_mode=apriori"))
    model = mdeq("cifar10-small", **TINY2, **model_arguments("cifar10-small", True, overrides))
    assert (model.config["forward_budget"], model.config["backward_budget"]) == (4, 3)
    assert mdeq(**model.config).config == model.config   # the config rebuilds it


@pytest.mark.parametrize("overrides,error,needle", [
    (dict(forward_budget=0), ConfigError, "forward_budget must be an int >= 1, got 0"),
    (dict(backward_budget=-2), ConfigError, "backward_budget must be an int >= 1"),
    (dict(forward_budget=2.5), ConfigError, "forward_budget must be an int"),
    (dict(forward_budget=True), ConfigError, "forward_budget must be an int"),
    (dict(backward_budget=3, backward=JFB()), ConfigError, "backward_budget=3 bounds the implicit backward"),
    (dict(forward_budget=3, forward=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="abs")), ConfigError,
     "forward_budget=3: .* stop_mode='rel'"),
    (dict(backward_budget=3, backward=Implicit(solver=FixedPoint(max_iter=20, tol=1e-3, stop_mode="rel"),
                                               x0="zeros")), ConfigError, "backward_budget=3: .* x0='v'"),
    (dict(forward_budget=3, constraint="released"), ConfigError, "constraint='released' certifies no bound"),
    (dict(forward_budget=3, forward=FixedPoint(max_iter=Apriori(), tol=1e-17, stop_mode="rel")), ConfigError,
     "forward_budget=3: tol=1e-17 is below what float64 can reach"),
    (dict(forward_budget=2, forward=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", tau=0.1)),
     ConfigError, "forward_budget=2 cannot be met: with damping tau=0.1 even a bound L = 0 needs"),
    (dict(bound="tight"), ConfigError, "bound must be one of"),
    (dict(bound="composed", constraint="none"), ConfigError, "bound='composed' tightens"),
])
def test_budget_settings_that_cannot_hold_are_errors_naming_them(overrides, error, needle):
    with pytest.raises(error, match=needle):
        resolve_config("cifar10-small", **overrides)


def test_budget_errors_at_the_solve_and_for_f_that_no_cap_can_bring_down():
    with pytest.raises(ConfigError, match="only apply to the Lipschitz variant"):
        resolve_config("cifar10-small", lipschitz=False, forward_budget=3)
    torch.manual_seed(8)
    tight = FixedPoint(max_iter=Apriori(), tol=1e-7, stop_mode="rel", exact=True)
    deq = CertifiedDEQ(_f().float(), forward=tight, backward=None, forward_budget=30)
    with pytest.raises(ConfigError, match=r"forward_budget=30: tol=1e-07 is below what float32 can reach"):
        deq(torch.randn(1, C, H, H))
    deq.double()(torch.randn(1, C, H, H, dtype=torch.float64))   # float64 resolves it
    assert reachable_tol(torch.float32) > 1e-7 > reachable_tol(torch.float64)
    # ConvexResidual's identity part (1 - alpha) s2 = 0.45 is not scaled by any cap: L* = L*(2) cannot be met
    with pytest.raises(ConfigError, match=r"forward_budget=2 cannot be met: it needs a certified bound L <= 0\.0"
                                          r".* already give L = 0\.45 with every cap at 0"):
        CertifiedDEQ(_f(), forward_budget=2)
    big = _f(cap=5.0)
    _randomise_(big, 3.0, 9)
    ok = CertifiedDEQ(big, forward=APRIORI_FORWARD, forward_budget=12)
    assert ok.lipschitz_bound() <= ok.budget.bound and ok.budget.cap_scale < 1.0


def test_loading_a_state_dict_sets_the_budgets_cap_scale_at_once():
    torch.manual_seed(11)
    big = _f(cap=5.0)
    _randomise_(big, 3.0, 9)
    saved = CertifiedDEQ(big, forward=APRIORI_FORWARD, forward_budget=12)
    fresh = CertifiedDEQ(_f(cap=5.0), forward=APRIORI_FORWARD, forward_budget=12)
    assert fresh.budget.cap_scale != saved.budget.cap_scale < 1.0
    fresh.load_state_dict(saved.state_dict())
    # No bound or solve asked yet: the layers' own bounds already use the loaded estimates' cap scale.
    assert [c.cap_scale for c in capped_layers(fresh.f)] == [saved.budget.cap_scale] * 2
    assert [float(c.lipschitz()) for c in capped_layers(fresh.f)] == [float(c.lipschitz())
                                                                      for c in capped_layers(big)]


def test_constraint_step_keeps_any_f_certified_after_an_optimiser_step():
    torch.manual_seed(10)
    f = _f(cap=0.8)
    deq = CertifiedDEQ(f, forward_budget=12)
    opt = torch.optim.SGD(f.parameters(), lr=1.0)
    x = torch.randn(2, C, H, H, dtype=torch.float64)
    for _ in range(2):
        opt.zero_grad()
        (-deq(x).square().sum()).backward()   # push the weights and gammas up
        opt.step()
        with torch.no_grad():
            for m in f.modules():
                if isinstance(m, MeanOnlyGroupNorm):
                    m.weight.mul_(3.0)
        deq.constraint_step()
        norms = [m for m in f.modules() if isinstance(m, MeanOnlyGroupNorm)]
        assert all(float(m.weight.abs().max()) <= m.gamma_max for m in norms)           # projected
        assert not any(c.estimate_is_stale() for c in f.modules() if isinstance(c, CappedConv2d))
        assert deq.lipschitz_bound() <= deq.budget.bound
        deq(x)
        assert deq.last_info["f_nstep"] <= 12


def test_a_budget_with_the_composed_bound():
    torch.manual_seed(11)
    model = mdeq("cifar10-small", **TINY2, **APRIORI_SOLVES, forward_budget=3, bound="composed")
    scale_weights_(model, conv_factor=30.0, gamma_factor=1.0)
    model.constraint_step(n_iter=30)
    L = model.lipschitz_bound()
    assert L <= model.cell.layerwise_bound() <= model.deq.budget.bound
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert model.last_info["f_nstep"] <= 3
