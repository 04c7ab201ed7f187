"""The certified bound: measured ||J_f|| <= lipschitz_bound(), conv estimates within the margin, L < 1
for the Lipschitz presets, and the a-priori iteration counts."""
import math

import pytest
import torch

from lmdeq.models import conv2d_norm_upper_bound, mdeq
from lmdeq.solvers import Apriori, FixedPoint, adjoint_apriori_iterations, apriori_iterations
from lmdeq.deq import jacobian_norm

from .tiny import TINY2, TINY3, scale_weights_, state_norm


def _model(tiny, seed, **kw):
    torch.manual_seed(seed)
    return mdeq("cifar10-small", **tiny, **kw).double()


@pytest.mark.parametrize("tiny,adversarial", [(TINY2, False), (TINY3, False), (TINY2, True), (TINY3, True)],
                         ids=["2br-init", "3br-init", "2br-scaled", "3br-scaled"])
def test_jacobian_norm_never_exceeds_bound(tiny, adversarial):
    model = _model(tiny, seed=10)
    if adversarial:  # blow every conv and gamma up, then re-constrain as the trainer would
        scale_weights_(model, conv_factor=1e3, gamma_factor=6.0)
        model.constraint_step(n_iter=model.config["init_power_iters"])
        assert all(float(c.lipschitz()) == pytest.approx(model.config["conv_cap"]) for c in model.cell.convs())
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        bound = model.lipschitz_bound()
        assert 0.0 < bound < 1.0
        f, z0 = model.fixed_point_problem(x)
        # train: at a random state; eval: at the initial state z0 = 0
        point = [3.0 * torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in z0] if mode == "train" else z0
        measured = jacobian_norm(f, point)
        assert measured <= bound, f"{mode}: ||J_f|| ~ {measured:.4f} exceeds the bound {bound:.4f}"


def test_conv_estimates_are_within_the_margin_at_real_sizes():
    # The certificate assumes ||A_W|| <= (1 + margin) sigma_hat; check it with verified upper bounds (exact
    # below 1024 input entries) at the layers' real input sizes, after construction and after a warm refresh.
    model = _model(TINY3, seed=12, init_power_iters=30)
    margin = model.config["sigma_margin"]
    for refresh in (False, True):
        if refresh:
            with torch.no_grad():
                for conv in model.cell.convs():
                    for p in conv.parameters():
                        p.add_(0.05 * p.abs().mean() * torch.randn_like(p))
            model.constraint_step()
        for conv in model.cell.convs():
            hw = tuple(conv.power_vector.shape[-2:]) if conv.kernel_size > 1 else (1, 1)
            upper = conv2d_norm_upper_bound(conv.unscaled_weight(), hw, conv.stride, conv.padding)
            est = float(conv.sigma)
            assert est <= upper * (1 + 1e-6)
            assert upper <= (1 + margin) * est, f"{conv}: true norm <= {upper:.5f}, estimate {est:.5f}"


@pytest.mark.parametrize("preset", ["cifar10-small", "cifar10-large"])
def test_presets_bound_is_below_one_even_with_every_conv_at_its_cap(preset):
    torch.manual_seed(13)
    model = mdeq(preset, init_power_iters=1)
    at_init = model.lipschitz_bound()
    scale_weights_(model, conv_factor=1e3, gamma_factor=10.0)
    model.constraint_step(n_iter=1)   # scaled by 1e3, every estimate is far above the cap
    worst = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        worst[mode] = model.lipschitz_bound()
        assert at_init < 1.0 and worst[mode] < 1.0
    assert worst["eval"] < worst["train"]   # dropout's 1/(1-p) enters in training mode only
    original = mdeq(preset, lipschitz=False)
    assert original.lipschitz_bound() == math.inf
    original.constraint_step()   # no-op, no error


@pytest.mark.parametrize("L", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_apriori_count_certifies_relative_residual_on_a_linear_contraction(L, tau):
    # f(z) = L Q z + b (Q orthogonal) from z0 = 0: the worst-case direction for the residual bound.
    torch.manual_seed(14)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    b = torch.randn(3, 12, dtype=torch.float64)
    tol = 1e-4
    n = apriori_iterations(L, tol, tau)
    z = FixedPoint(max_iter=n, exact=True, tau=tau).solve(lambda z: L * z @ q.T + b, torch.zeros_like(b)).value
    fz = L * z @ q.T + b
    rel = ((fz - z).norm(dim=1) / fz.norm(dim=1)).max()
    assert rel <= tol
    # the adjoint problem g = J^T g + v (J = L Q) from g0 = v: its own, smaller count suffices
    v = torch.randn(3, 12, dtype=torch.float64)
    n_adj = adjoint_apriori_iterations(L, tol, tau)
    g = FixedPoint(max_iter=n_adj, exact=True, tau=tau).solve(lambda g: L * g @ q + v, v.clone()).value
    fg = L * g @ q + v
    assert ((fg - g).norm(dim=1) / fg.norm(dim=1)).max() <= tol
    assert n_adj <= n
    with pytest.raises(RuntimeError, match="not < 1"):
        apriori_iterations(1.0, tol)
    with pytest.raises(RuntimeError, match="not < 1"):
        adjoint_apriori_iterations(1.0, tol)


@pytest.mark.parametrize("L", [0.05, 0.15, 0.25, 0.5, 0.9])
def test_apriori_counts_are_at_least_the_worst_case(L):
    # Worst case of the forward bound in one dimension, f(z) = -L z + 1 from 0 (the iterates overshoot
    # and |f(z_k)| is smallest): the count must reach tol there; the count for a looser target may not.
    tol = 1e-3
    n = apriori_iterations(L, tol)
    z = 0.0
    for _ in range(n):
        z = -L * z + 1.0
    assert abs((-L * z + 1.0) - z) / abs(-L * z + 1.0) <= tol
    # adjoint worst case: g = -L g + v from g0 = v
    n_adj = adjoint_apriori_iterations(L, tol)
    g = 1.0
    for _ in range(n_adj):
        g = -L * g + 1.0
    assert abs((-L * g + 1.0) - g) / abs(-L * g + 1.0) <= tol


@pytest.mark.parametrize("adversarial", [False, True], ids=["init", "scaled"])
def test_model_solve_reaches_tolerance_within_the_apriori_count(adversarial):
    model = _model(TINY2, seed=15, forward=FixedPoint(max_iter=Apriori(), tol=1e-4, stop_mode="rel"))
    if adversarial:
        scale_weights_(model, conv_factor=40.0, gamma_factor=6.0)
        model.constraint_step(n_iter=model.config["init_power_iters"])
    model.eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    count = apriori_iterations(model.lipschitz_bound(), 1e-4)
    # Checked mode (default): stops early, never needs more than the count.
    with torch.no_grad():
        model(x)
    info = model.last_info
    assert info["converged"] == 1.0 and info["f_nstep"] <= count
    # A-priori mode: exactly `count` unchecked steps; measure the returned point's residual directly.
    f, z0 = model.fixed_point_problem(x)
    with torch.no_grad():
        sol = FixedPoint(max_iter=count, exact=True).solve(f, z0)
        z, sinfo = sol.value, sol.stats
        fz = f(z)
    for b in range(x.shape[0]):
        res = state_norm([a[b] - c[b] for a, c in zip(fz, z)]) / state_norm([a[b] for a in fz])
        assert res <= 1e-4
    assert sinfo["f_evals"] == count
    # Adjoint: g = J_f(z*)^T g + v from g0 = v, exactly the adjoint a-priori count, residual measured.
    with torch.no_grad():
        z_star = FixedPoint(max_iter=200, tol=1e-13, stop_mode="rel").solve(f, z0).value
    with torch.enable_grad():
        zs = [t.detach().requires_grad_() for t in z_star]
        fz = f(zs)
    v = [torch.randn_like(t) for t in zs]

    def adjoint_map(g):
        jt = torch.autograd.grad(fz, zs, g, retain_graph=True)
        return [a + b for a, b in zip(v, jt)]

    b_count = adjoint_apriori_iterations(model.lipschitz_bound(), 1e-4)
    g = FixedPoint(max_iter=b_count, exact=True).solve(adjoint_map, v).value
    fg = adjoint_map(g)
    for b in range(x.shape[0]):
        res = state_norm([a[b] - c[b] for a, c in zip(fg, g)]) / state_norm([a[b] for a in fg])
        assert res <= 1e-4
    assert b_count <= count


def test_original_converges_worse_than_lipschitz_on_the_same_input(record_property, capsys):
    # Measured, not assumed: each variant with its default solver on the same input (eval mode).
    torch.manual_seed(16)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    residual, evals = {}, {}
    for lip in (False, True):
        model = mdeq("cifar10-small", lipschitz=lip, **TINY2).double().eval()
        with torch.no_grad():
            model(x)
        residual[lip], evals[lip] = model.last_info["f_residual"], model.last_info["f_nstep"]
        record_property(f"f_residual_lipschitz_{lip}", residual[lip])
    with capsys.disabled():
        print(f"\n[models] final relative residual: original {residual[False]:.3e} (Broyden, {evals[False]} "
              f"f-evaluations), Lipschitz {residual[True]:.3e} (fixed point, {evals[True]})")
    assert residual[True] <= 1e-3
    assert all(math.isfinite(r) for r in residual.values())


def test_gammas_learn_from_init_and_the_bound_still_holds():
    # Every gamma starts on the boundary gamma_max = 1; a plain clamp would give it zero gradient there.
    model = _model(TINY2, seed=17)
    norms = model.cell.gamma_clipped_norms()
    assert norms and all(bool((n.weight == model.config["gamma_max"]).all()) for n in norms)
    start = [n.weight.detach().clone() for n in norms]
    gen = torch.Generator().manual_seed(18)
    x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert any(float(n.weight.grad.abs().max()) > 0 for n in norms), "gamma gradients are all zero"
        opt.step()
        # Between the step and its projection, the forward pass still uses a clipped gamma.
        assert all(float(n.effective_gamma().abs().max()) <= n.gamma_max for n in norms)
        model.constraint_step()
    moved = [float((n.weight.detach() - s).abs().max()) for n, s in zip(norms, start)]
    assert min(moved) > 1e-4, f"some GroupNorm gammas did not move: {moved}"
    assert all(float(n.weight.abs().max()) <= n.gamma_max for n in norms)   # projected after the step
    for mode in ("train", "eval"):
        model.train(mode == "train")
        bound = model.lipschitz_bound()
        f, z0 = model.fixed_point_problem(x[:1])
        point = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in z0]
        assert jacobian_norm(f, point) <= bound < 1.0


def test_gamma_clip_is_straight_through_and_exact():
    from lmdeq.models.normalization import MeanOnlyGroupNorm

    norm = MeanOnlyGroupNorm(2, 4, gamma_max=0.5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.7, -0.9, 0.5, 0.1], dtype=torch.float64))
    gamma = norm.effective_gamma()
    assert gamma.tolist() == [0.5, -0.5, 0.5, 0.1]   # the forward value is exactly the clip
    gamma.sum().backward()
    assert norm.weight.grad.tolist() == [1.0, 1.0, 1.0, 1.0]   # gradient alive on and beyond the boundary
