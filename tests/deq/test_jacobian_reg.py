"""Jacobian regularisation and the power method (lmdeq.deq.jacobian), the pair deq_solve hands out, and the
TorchDEQ adapter's names for them.

* jac_reg's expectation is ||J||_F^2 / numel exactly: a float64 map with a known Jacobian, many vectors, and
  a bound of 6 standard errors from the estimator's own variance (Var ||v^T J||^2 = 2 ||J J^T||_F^2 for
  Gaussian v), tight enough that every plausible wrong normalisation lies outside it (asserted too);
* the values are TorchDEQ 0.1.0's with the same seed (tensor states), and a list state gives the value of its
  per-sample flattened tensor (MDEQ's list2vec);
* gradients (create_graph=True) pass torch.autograd.gradcheck in float64, tensor and list states;
* deq_solve(..., jacobian_pair=True): the pair is f evaluated at the returned z*, costs no f-evaluation with
  the implicit backward (one with JFB / Phantom / none), and leaves z* and its gradients unchanged; the
  combined gradient of loss + w * jac_reg(pair) is the implicit gradient plus the regulariser's own;
* bad arguments are errors naming them.
"""
import math

import pytest
import torch

import lmdeq
from lmdeq import JFB, Implicit, Phantom, deq_solve
from lmdeq.deq import DEQ, JacobianPair, jac_reg, jacobian_pair, power_method
from lmdeq.solvers import Anderson, FixedPoint

torchdeq = pytest.importorskip("torchdeq")
from torchdeq.loss import jacobian as tdeq_jacobian  # noqa: E402

B, N = 3, 5


def _weights(seed=0, n=N, scale=0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=torch.float64) * scale


def _tanh_map(W, b=None):
    """f(z) = tanh(z W^T + b) per sample: J_b = diag(1 - f_b^2) W."""
    return lambda z: torch.tanh(z @ W.T + (0.1 if b is None else b))


def _exact(W, z):
    """(||J||_F^2 over the batch, ||J J^T||_F^2 over the batch) of the tanh map at z (block diagonal J)."""
    d = 1 - torch.tanh(z @ W.T + 0.1) ** 2                    # (B, N)
    J = d[:, :, None] * W[None]                                # (B, N, N): J_b[i, j] = d_bi W_ij
    JJt = J @ J.transpose(1, 2)
    return float((J ** 2).sum()), float((JJt ** 2).sum())


def _list_map(W):
    """A two-part state ([B, 2], [B, 3]) whose flattened map is the tanh map of W."""
    f = _tanh_map(W)

    def g(z):
        out = f(torch.cat([z[0], z[1].reshape(B, -1)], dim=1))
        return [out[:, :2], out[:, 2:].reshape(B, 3, 1)]
    return g


def _split(z):
    return [z[:, :2].clone(), z[:, 2:].reshape(B, 3, 1).clone()]


# -- the estimator -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["tensor", "list"])
def test_expectation_is_the_frobenius_norm_per_element(state):
    W = _weights()
    z = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    frob, frob_jjt = _exact(W, z)
    numel = B * N
    K = 4000
    torch.manual_seed(2)
    if state == "tensor":
        zl = z.clone().requires_grad_()
        est = float(jac_reg(_tanh_map(W)(zl), zl, vecs=K, create_graph=False))
    else:
        zl = [p.requires_grad_() for p in _split(z)]
        est = float(jac_reg(_list_map(W)(zl), zl, vecs=K, create_graph=False))
    exact = frob / numel
    se = math.sqrt(2 * frob_jjt / K) / numel                  # standard error of the K-vector mean / numel
    assert abs(est - exact) < 6 * se, (est, exact, se)
    # The bound is tight enough to catch every plausible mis-normalisation: per sample instead of per element
    # of the batch, per batch instead of per element, the sum over the vectors instead of their mean.
    for wrong in (est * numel / N, est * numel / B, est * K):
        assert abs(wrong - exact) > 6 * se


def test_a_linear_map_needs_no_statistics_for_its_scale():
    """f(z) = z W^T: ||v^T J||^2 summed over vecs is a chi-square-weighted sum; with W orthogonal times c it is
    c^2 ||v||^2, so the estimate is c^2 times the sample mean of ||v||^2 / numel, computed here exactly."""
    Q, _ = torch.linalg.qr(_weights(3))
    c = 0.7
    z = torch.zeros(B, N, dtype=torch.float64, requires_grad=True)
    f0 = z @ (c * Q).T
    torch.manual_seed(5)
    est = jac_reg(f0, z, vecs=2)
    torch.manual_seed(5)
    vs = [torch.randn(B, N).double() for _ in range(2)]
    expected = c ** 2 * sum(float((v ** 2).sum()) for v in vs) / 2 / (B * N)
    assert float(est) == pytest.approx(expected, rel=1e-12)


# -- TorchDEQ's values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("vecs", [1, 3])
def test_jac_reg_equals_torchdeq_with_the_same_seed(dtype, vecs):
    W = _weights().to(dtype)
    z = torch.randn(B, N, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
    f0 = _tanh_map(W)(z)
    torch.manual_seed(7)
    ours = jac_reg(f0, z, vecs=vecs)
    torch.manual_seed(7)
    theirs = tdeq_jacobian.jac_reg(f0, z, vecs=vecs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    torch.manual_seed(7)
    jac_reg(f0, z, vecs=vecs)
    after_ours = torch.randn(1)
    torch.manual_seed(7)
    tdeq_jacobian.jac_reg(f0, z, vecs=vecs)
    assert torch.equal(after_ours, torch.randn(1))


def test_power_method_equals_torchdeq_with_the_same_seed():
    W = _weights(scale=0.6)
    z = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    f = _tanh_map(W)
    torch.manual_seed(3)
    vec, val = power_method(f(z), z, n_iters=30)
    torch.manual_seed(3)
    vec_t, val_t = tdeq_jacobian.power_method(f(z), z, n_iters=30)
    assert torch.equal(vec, vec_t) and torch.equal(val, val_t) and val.shape == (B,)
    # and it estimates the spectral radius of each sample's Jacobian
    d = 1 - torch.tanh(z.detach() @ W.T + 0.1) ** 2
    rho = torch.linalg.eigvals(d[:, :, None] * W[None]).abs().max(dim=1).values
    assert torch.allclose(val, rho, rtol=0.05)


def test_power_method_keeps_the_graph_of_f0():
    """TorchDEQ's frees f0's graph in its last step; lmdeq's keeps it for the loss that still needs it."""
    W = _weights().requires_grad_()
    z = torch.randn(B, N, dtype=torch.float64).requires_grad_()
    f0 = _tanh_map(W)(z)
    power_method(f0, z, n_iters=2)
    f0.sum().backward()
    assert W.grad is not None


def _list2vec(parts):
    return torch.cat([p.reshape(B, -1, 1) for p in parts], dim=1)


def test_a_list_state_gives_the_value_of_its_flattened_tensor():
    W = _weights()
    z = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    zl = [p.requires_grad_() for p in _split(z)]
    f0 = _list_map(W)(zl)
    zf = _list2vec([p.detach() for p in zl]).requires_grad_()   # (B, N, 1), as MDEQ's list2vec
    ff = _list2vec(_list_map(W)([zf[:, :2, 0], zf[:, 2:].reshape(B, 3, 1)]))
    for vecs in (1, 2):
        torch.manual_seed(11)
        ours = jac_reg(f0, zl, vecs=vecs)
        torch.manual_seed(11)
        theirs = tdeq_jacobian.jac_reg(ff, zf, vecs=vecs)
        assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-13)
    torch.manual_seed(12)
    vec, val = power_method(f0, tuple(zl), n_iters=20)
    torch.manual_seed(12)
    vec_t, val_t = tdeq_jacobian.power_method(ff, zf, n_iters=20)
    assert isinstance(vec, tuple) and [v.shape for v in vec] == [p.shape for p in zl]
    assert torch.allclose(val, val_t, rtol=1e-12)
    assert torch.allclose(_list2vec(list(vec)), vec_t, rtol=1e-10, atol=1e-12)


# -- gradients -------------------------------------------------------------------------------------------
def test_gradcheck_tensor_state():
    def fn(W, z):
        torch.manual_seed(0)   # the same vectors at every evaluation
        return jac_reg(torch.tanh(z @ W.T + 0.1), z, vecs=2)

    W = _weights().requires_grad_()
    z = torch.randn(2, N, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fn, (W, z))


def test_gradcheck_list_state():
    W = _weights()

    def fn(Wp, a, b):
        torch.manual_seed(0)
        f = _list_map(Wp)
        return jac_reg(f([a, b]), [a, b], vecs=2)

    z = _split(torch.randn(B, N, dtype=torch.float64))
    assert torch.autograd.gradcheck(fn, (W.requires_grad_(), *[p.requires_grad_() for p in z]))


def test_create_graph_false_is_not_differentiable():
    W = _weights().requires_grad_()
    z = torch.randn(B, N, dtype=torch.float64).requires_grad_()
    assert not jac_reg(_tanh_map(W)(z), z, create_graph=False).requires_grad
    assert jac_reg(_tanh_map(W)(z), z).requires_grad


# -- the pair from deq_solve -----------------------------------------------------------------------------
class Counted:
    """f(z) = tanh(z W^T + x) (list or tensor state), counting its calls."""

    def __init__(self, W, x, parts=False):
        self.W, self.x, self.parts, self.calls = W, x, parts, 0

    def __call__(self, z):
        self.calls += 1
        if self.parts:
            flat = torch.cat([z[0], z[1].reshape(z[1].shape[0], -1)], dim=1)
            out = torch.tanh(flat @ self.W.T + self.x)
            return [out[:, :2], out[:, 2:].reshape(-1, 3, 1)]
        return torch.tanh(z @ self.W.T + self.x)


def _problem(parts=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(N, N, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.randn(B, N, generator=g, dtype=torch.float64).requires_grad_()
    z0 = _split(torch.zeros(B, N, dtype=torch.float64)) if parts else torch.zeros(B, N, dtype=torch.float64)
    return Counted(W, x, parts), z0


SOLVE = dict(solver=Anderson(max_iter=60, tol=1e-12))


@pytest.mark.parametrize("parts", [False, True])
def test_implicit_pair_is_the_tracked_evaluation_and_costs_nothing(parts):
    f, z0 = _problem(parts)
    z_ref, _ = deq_solve(f, z0, **SOLVE)
    calls_without = f.calls
    f.calls = 0
    z, info = deq_solve(f, z0, jacobian_pair=True, **SOLVE)
    assert f.calls == calls_without                       # no extra f-evaluation
    pair = info.jacobian_pair
    assert isinstance(pair, JacobianPair)
    zs = [z] if torch.is_tensor(z) else list(z)
    z0s = [pair.z0] if torch.is_tensor(pair.z0) else list(pair.z0)
    f0s = [pair.f0] if torch.is_tensor(pair.f0) else list(pair.f0)
    for a, b in zip(zs, [z_ref] if torch.is_tensor(z_ref) else z_ref):
        assert torch.equal(a, b)                           # z* unchanged by the option
    for p in z0s:
        assert p.requires_grad
    fresh = f([p.detach() for p in z0s] if parts else z0s[0].detach())
    for a, b, zz in zip(f0s, [fresh] if torch.is_tensor(fresh) else fresh, zs):
        assert torch.equal(a, b)                           # f0 = f(z0) ...
        assert torch.equal(a, zz)                          # ... and z = f(z*) as the implicit mode returns it
    assert jac_reg(pair.f0, pair.z0).item() > 0


@pytest.mark.parametrize("backward", [JFB(), Phantom(steps=2, tau=0.5), None])
def test_other_modes_pay_one_evaluation(backward):
    f, z0 = _problem()
    deq_solve(f, z0, backward=backward, **SOLVE)
    base = f.calls
    f.calls = 0
    z, info = deq_solve(f, z0, backward=backward, jacobian_pair=True, **SOLVE)
    assert f.calls == base + 1
    f0, zz = info.jacobian_pair
    assert zz.requires_grad and zz.is_leaf and f0.requires_grad
    assert torch.equal(f0, f(zz.detach()))


def test_no_grad_still_gives_a_differentiable_pair():
    f, z0 = _problem()
    with torch.no_grad():
        z, info = deq_solve(f, z0, jacobian_pair=True, **SOLVE)
        assert not z.requires_grad
        torch.manual_seed(0)
        _, rho = power_method(*info.jacobian_pair, n_iters=20)
    assert rho.shape == (B,) and bool((rho < 1).all())


def test_gradient_of_loss_plus_jac_reg_is_the_sum_of_both():
    """(L(z*) + w jac_reg(pair)).backward() with the implicit pair == the implicit gradient of L plus the
    gradient of the regulariser at z* held fixed (the same vectors), computed separately."""
    w = 0.7
    f, z0 = _problem()
    back = Implicit(solver=FixedPoint(max_iter=200, tol=1e-13))
    z, info = deq_solve(f, z0, backward=back, jacobian_pair=True, **SOLVE)
    torch.manual_seed(4)
    total = (z ** 2).sum() + w * jac_reg(*info.jacobian_pair, vecs=2)
    got = torch.autograd.grad(total, [f.W, f.x])

    z2, _ = deq_solve(f, z0, backward=back, **SOLVE)
    g_loss = torch.autograd.grad((z2 ** 2).sum(), [f.W, f.x])
    pair = jacobian_pair(f, z2.detach())
    torch.manual_seed(4)
    g_jac = torch.autograd.grad(w * jac_reg(*pair, vecs=2), [f.W, f.x])
    for a, b, c in zip(got, g_loss, g_jac):
        assert torch.allclose(a, b + c, rtol=1e-9, atol=1e-12)


def test_deq_layer_passes_the_option():
    f, z0 = _problem()
    layer = DEQ(lambda z, x: torch.tanh(z @ f.W.T + x), jacobian_pair=True, **SOLVE)
    z, info = layer(z0, f.x)
    assert isinstance(info.jacobian_pair, JacobianPair)


def test_top_level_names():
    assert lmdeq.jac_reg is jac_reg and lmdeq.power_method is power_method


# -- errors ----------------------------------------------------------------------------------------------
def test_bad_arguments_are_named():
    W = _weights()
    z = torch.randn(B, N, dtype=torch.float64).requires_grad_()
    f0 = _tanh_map(W)(z)
    with pytest.raises(ValueError, match="z0 does not require grad"):
        zd = z.detach()
        jac_reg(_tanh_map(W.requires_grad_())(zd), zd)
    W.requires_grad_(False)
    with pytest.raises(ValueError, match="f0 has no autograd graph"):
        jac_reg(f0.detach(), z)
    other = torch.randn(B, N, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="f0 does not depend on z0"):
        jac_reg(_tanh_map(W)(other), z)
    with pytest.raises(TypeError, match="f0"):
        jac_reg([f0], z)
    with pytest.raises(TypeError, match="f0"):
        jac_reg(f0, [z])
    with pytest.raises(ValueError, match="f0 has 1 parts but z0 has 2"):
        jac_reg([f0], [z, z])
    with pytest.raises(ValueError, match=r"f0 has shape \(3, 4\)"):
        jac_reg(f0[:, :4], z)
    with pytest.raises(TypeError, match="z0 must be"):
        jac_reg(f0, "z")
    with pytest.raises(ValueError, match="z0\\[1\\] has batch size"):
        jac_reg([f0, f0[:2]], [z, z[:2]])
    with pytest.raises(ValueError, match="vecs"):
        jac_reg(f0, z, vecs=0)
    with pytest.raises(TypeError, match="vecs"):
        jac_reg(f0, z, vecs=1.5)
    with pytest.raises(TypeError, match="create_graph"):
        jac_reg(f0, z, create_graph=1)
    with pytest.raises(ValueError, match="n_iters"):
        power_method(f0, z, n_iters=0)
    with pytest.raises(ValueError, match="z0 does not require grad"):
        power_method(f0, z.detach())
    with pytest.raises(TypeError, match="jacobian_pair"):
        deq_solve(_tanh_map(W), torch.zeros(B, N, dtype=torch.float64), jacobian_pair="yes")
    with pytest.raises(TypeError, match="jacobian_pair: z must be"):
        jacobian_pair(_tanh_map(W), None)


# -- the TorchDEQ adapter ------------------------------------------------------------------------------------
def test_torchdeq_names_after_register_replace():
    import torchdeq.core
    import torchdeq.loss
    from lmdeq.integrations import torchdeq as adapter

    assert adapter.jac_reg is jac_reg and adapter.power_method is power_method
    theirs = (tdeq_jacobian.jac_reg, tdeq_jacobian.power_method)
    with adapter.registered(replace=True):
        for module in (tdeq_jacobian, torchdeq.loss, torchdeq):
            assert module.jac_reg is jac_reg and module.power_method is power_method
        assert torchdeq.core.power_method is power_method
        # a TorchDEQ user's JR training step, unchanged: names looked up from torchdeq.loss
        W = _weights().requires_grad_()
        z = torch.randn(B, N, dtype=torch.float64).requires_grad_()
        loss = torchdeq.loss.jac_reg(_tanh_map(W)(z), z)
        loss.backward()
        assert W.grad is not None and torch.isfinite(W.grad).all()
    assert (tdeq_jacobian.jac_reg, tdeq_jacobian.power_method) == theirs
    assert torchdeq.loss.jac_reg is theirs[0] and torchdeq.jac_reg is theirs[0]
    assert torchdeq.core.power_method is theirs[1]
    try:
        adapter.register(replace=True)
        assert torchdeq.loss.jac_reg is jac_reg
        adapter.register()                     # without replace: the patch stays as it is
        assert torchdeq.loss.power_method is power_method
    finally:
        adapter.unregister()
    assert torchdeq.loss.jac_reg is theirs[0] and torchdeq.core.power_method is theirs[1]


def test_torchdeq_sradius_runs_on_lmdeq_power_method():
    """TorchDEQ's core estimates the spectral radius with the patched power_method (same value as its own)."""
    import torchdeq.core
    from lmdeq.integrations import torchdeq as adapter

    W = _weights(scale=0.3)
    deq = torchdeq.get_deq(f_solver="fixed_point_iter", f_max_iter=50, f_tol=1e-10)
    z_star = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    theirs = deq._sradius(_tanh_map(W), z_star.clone())
    with adapter.registered(replace=True):
        torch.manual_seed(0)
        ours = deq._sradius(_tanh_map(W), z_star.clone())
    assert torch.equal(ours, theirs)


def test_graphed_adjoint_pays_one_evaluation_and_keeps_its_gradients():
    """With a graphed adjoint (its linearisation is made inside the graph) the pair is one more eager
    f-evaluation at z*; the solve and its gradients are those without the option (CPU graph double)."""
    from contextlib import contextmanager

    from lmdeq.cuda_graphs import GraphCache
    from lmdeq.deq import GraphedProblem

    from .graph_double import RerunCall

    f, z0 = _problem()
    cache = GraphCache(call_type=RerunCall)

    @contextmanager
    def bind(static):
        yield lambda z: torch.tanh(z @ f.W.T + static[0])

    def solve(pair):
        f.calls = 0
        z, info = deq_solve(f, z0, solver=FixedPoint(max_iter=25, exact=True),
                            backward=Implicit(solver=FixedPoint(max_iter=25, tol=1e-6, exact=True)),
                            graph=GraphedProblem(cache, ("jr", f.W.data_ptr()), [f.x], bind), jacobian_pair=pair)
        grads = torch.autograd.grad((z ** 2).sum(), [f.W, f.x])
        return z, info, grads, f.calls

    z_a, _, g_a, calls_a = solve(False)
    z_b, info, g_b, calls_b = solve(True)
    assert info.cuda_graph is True and calls_b == calls_a + 1
    assert torch.equal(z_a, z_b) and all(torch.equal(a, b) for a, b in zip(g_a, g_b))
    f0, zz = info.jacobian_pair
    assert zz.is_leaf and zz.requires_grad and torch.equal(f0, f(zz.detach()))


def test_jacobian_norm_is_the_spectral_norm_of_the_jacobian():
    """Against the dense Jacobian in float64: a linear map on a tensor state and a nonlinear map on a list state."""
    from lmdeq.deq import jacobian_norm

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    z = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    assert jacobian_norm(lambda t: t @ A.T, z, iters=200) == pytest.approx(
        float(torch.linalg.matrix_norm(A, ord=2)), rel=1e-8)
    B = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    parts = [torch.randn(1, 4, generator=gen, dtype=torch.float64), torch.randn(1, 3, generator=gen, dtype=torch.float64)]
    f = lambda p: [torch.tanh(p[0] + p[1] @ B), torch.sin(p[1])]   # noqa: E731
    flat = lambda v: torch.cat([t.flatten() for t in f([v[:4].view(1, 4), v[4:].view(1, 3)])])   # noqa: E731
    dense = torch.autograd.functional.jacobian(flat, torch.cat([t.flatten() for t in parts]))
    assert jacobian_norm(f, parts, iters=300) == pytest.approx(float(torch.linalg.matrix_norm(dense, ord=2)), rel=1e-6)


def test_jacobian_norm_per_sample_is_each_samples_norm():
    from lmdeq.deq import jacobian_norm

    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)       # one matrix per sample
    z = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    got = jacobian_norm(lambda t: torch.einsum("bij,bj->bi", A, t), z, iters=300, per_sample=True)
    assert got.shape == (3,)
    assert torch.allclose(got, torch.linalg.matrix_norm(A, ord=2), rtol=1e-8)
    assert jacobian_norm(lambda t: torch.einsum("bij,bj->bi", A, t), z, iters=300) == pytest.approx(float(got.max()))
