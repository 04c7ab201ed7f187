"""Which autograd transforms work through deq_solve, and that the others are refused, never silently wrong.

Supported: first-order gradients (.backward, torch.autograd.grad) with every backward method; higher-order
gradients and forward-mode tangents through JFB and Phantom (plain autograd: the derivative of their
approximation, checked against autograd of the same unrolled steps); torch.func.functional_call. Refused with an
error that names the limitation: a graph through the implicit backward (create_graph=True: gradient penalties,
double backward), a batched backward pass through it (vectorize=True), forward-mode dual tensors through it or
through a solve under no_grad (their tangent would be dropped), and torch.func transforms (grad, vjp, jvp,
jacrev, vmap, linearize). The fault table (scripts/fault_fuzz.py) runs every transform with every backward.
"""
import torch.autograd.forward_ad as fwAD
import pytest
import torch

from lmdeq import deq_solve
from lmdeq.solvers import Anderson, FixedPoint
from lmdeq.deq import JFB, Implicit, Phantom

from ..solvers.problems import tanh_contraction


def _problem():
    f0, z0, W, x = tanh_contraction(6, 3, 0.6, seed=4)
    W = W.clone().requires_grad_()
    return W, x, z0


def _f(W, x):
    return lambda z: torch.tanh(z @ W.T + x)


def test_first_order_implicit_gradient_is_the_unrolled_one():
    W, x, z0 = _problem()
    z, _ = deq_solve(_f(W, x), z0, solver=FixedPoint(max_iter=200, tol=1e-13),
                     backward=Implicit(solver=FixedPoint(max_iter=200, tol=1e-13)))
    (g,) = torch.autograd.grad((z ** 2).sum(), W)
    z_u = z0
    for _ in range(200):
        z_u = _f(W, x)(z_u)
    (g_u,) = torch.autograd.grad((z_u ** 2).sum(), W)
    assert float((g - g_u).norm() / g_u.norm()) < 1e-10


def test_a_gradient_penalty_through_the_implicit_backward_is_refused():
    W, x, z0 = _problem()
    z, _ = deq_solve(_f(W, x), z0, solver=FixedPoint(max_iter=200, tol=1e-13))
    with pytest.raises(RuntimeError, match="create_graph=True through the DEQ's backward.*not supported"):
        torch.autograd.grad((z ** 2).sum(), W, create_graph=True)
    x = x.clone().requires_grad_()     # a penalty on the input gradient, W frozen
    z, _ = deq_solve(_f(W.detach(), x), z0, solver=FixedPoint(max_iter=200, tol=1e-13))
    with pytest.raises(RuntimeError, match="silently wrong"):
        torch.autograd.grad((z ** 2).sum(), x, create_graph=True)


@pytest.mark.parametrize("backward,steps", [(JFB(), 1), (Phantom(steps=3, tau=0.5), 3)])
def test_higher_order_gradients_through_jfb_and_phantom_are_their_approximations(backward, steps):
    W, x, z0 = _problem()
    z, _ = deq_solve(_f(W, x), z0, solver=FixedPoint(max_iter=200, tol=1e-13), backward=backward)
    (g,) = torch.autograd.grad((z ** 2).sum(), W, create_graph=True)
    (gg,) = torch.autograd.grad((g ** 2).sum(), W)
    # the same approximation written out: steps of f (damped for Phantom) from the detached fixed point
    star = z.detach()
    for _ in range(200):
        star = _f(W, x)(star).detach()
    z_a = star
    for _ in range(steps):
        z_a = _f(W, x)(z_a) if isinstance(backward, JFB) else (1 - backward.tau) * z_a + backward.tau * _f(W, x)(z_a)
    (g_a,) = torch.autograd.grad((z_a ** 2).sum(), W, create_graph=True)
    (gg_a,) = torch.autograd.grad((g_a ** 2).sum(), W)
    assert float((gg - gg_a).norm() / gg_a.norm()) < 1e-8


@pytest.mark.parametrize("transform", ["grad", "vjp", "jacrev", "vmap"])
def test_torch_func_transforms_are_refused_by_name(transform):
    W, x, z0 = _problem()
    W = W.detach()

    def solve(xx):
        z, _ = deq_solve(_f(W, xx), torch.zeros_like(xx), solver=FixedPoint(max_iter=50, tol=1e-8))
        return z.sum()

    call = {"grad": lambda: torch.func.grad(solve)(x), "vjp": lambda: torch.func.vjp(solve, x),
            "jacrev": lambda: torch.func.jacrev(solve)(x), "vmap": lambda: torch.func.vmap(solve)(x)}[transform]
    with pytest.raises(NotImplementedError, match="torch.func transforms .* are not supported"):
        call()


def test_functional_call_works():
    lin = torch.nn.Linear(6, 6).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    params = {k: (0.5 * v).detach().requires_grad_() for k, v in lin.named_parameters()}

    def f_of(z):
        return torch.tanh(torch.func.functional_call(lin, params, (z,)) + x)

    z, info = deq_solve(f_of, torch.zeros_like(x), solver=Anderson(max_iter=100, tol=1e-10))
    z.sum().backward()
    assert info.result == "converged" and params["weight"].grad is not None and lin.weight.grad is None


def test_nothing_requires_grad_so_neither_does_the_result():
    """f with no parameter or input that requires grad: z* does not claim a gradient (.numpy() works), while
    the pair for Jacobian regularisation is still there; with one parameter requiring grad it does."""
    _, x, z0 = _problem()
    W = torch.randn(6, 6, dtype=torch.float64) * 0.1
    z, info = deq_solve(_f(W, x), z0, solver=FixedPoint(max_iter=100, tol=1e-10), jacobian_pair=True)
    assert not z.requires_grad and z.numpy().shape == (3, 6)
    assert info.jacobian_pair.f0.requires_grad
    z, _ = deq_solve(_f(W.requires_grad_(), x), z0, solver=FixedPoint(max_iter=100, tol=1e-10))
    assert z.requires_grad
    z, _ = deq_solve(_f(W.detach(), x.clone().requires_grad_()), z0, solver=FixedPoint(max_iter=100, tol=1e-10))
    assert z.requires_grad   # an input that requires grad is reached too


def test_a_meta_device_state_is_refused_by_name():
    from lmdeq.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="z0 is on the meta device"):
        deq_solve(lambda z: 0.5 * z, torch.zeros(2, 4, device="meta"), solver=FixedPoint())


def _tangent(backward, no_grad=False):
    """The forward-mode tangent of z*(W) in the direction V, through deq_solve with ``backward``."""
    W, x, z0 = _problem()
    V = torch.randn(W.shape, dtype=W.dtype, generator=torch.Generator().manual_seed(3))
    with fwAD.dual_level():
        f = _f(fwAD.make_dual(W.detach(), V), x)
        if no_grad:
            with torch.no_grad():
                z, _ = deq_solve(f, z0, solver=FixedPoint(max_iter=200, tol=1e-13), backward=backward)
        else:
            z, _ = deq_solve(f, z0, solver=FixedPoint(max_iter=200, tol=1e-13), backward=backward)
        return fwAD.unpack_dual(z).tangent, W, x, V


@pytest.mark.parametrize("no_grad", [False, True])
def test_forward_mode_through_the_implicit_gradient_is_refused(no_grad):
    """The solution would carry no tangent at all (before: a silent None)."""
    with pytest.raises(NotImplementedError, match="forward-mode AD .* would be silently dropped"):
        _tangent(Implicit(solver=FixedPoint(max_iter=200, tol=1e-13)), no_grad)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        _tangent(JFB(), no_grad=True)   # no_grad: z* comes back detached, whatever the backward


def test_forward_mode_through_jfb_is_the_tangent_of_its_approximation():
    tangent, W, x, V = _tangent(JFB())
    star = torch.zeros_like(x)
    for _ in range(200):
        star = _f(W, x)(star)
    _, want = torch.func.jvp(lambda w: _f(w, x)(star), (W.detach(),), (V,))   # f at the fixed point, z* held
    assert float((tangent - want).detach().norm() / want.norm()) < 1e-10
    assert _tangent(None)[0] is None   # backward=None: no derivative at all, as documented


def test_a_batched_backward_through_the_implicit_gradient_is_refused():
    W, x, z0 = _problem()

    def solve(w, backward):
        return deq_solve(_f(w, x), z0, solver=FixedPoint(max_iter=200, tol=1e-13), backward=backward)[0]

    exact = Implicit(solver=FixedPoint(max_iter=200, tol=1e-13))
    with pytest.raises(NotImplementedError, match="a batched backward pass"):
        torch.autograd.functional.jacobian(lambda w: solve(w, exact), W.detach(), vectorize=True)
    rows = torch.autograd.functional.jacobian(lambda w: solve(w, exact), W.detach())   # one pass per row: works
    unrolled = torch.autograd.functional.jacobian(lambda w: _unrolled(w, x, z0), W.detach())
    assert float((rows - unrolled).norm() / unrolled.norm()) < 1e-10


def _unrolled(W, x, z0, steps=200):
    z = z0
    for _ in range(steps):
        z = _f(W, x)(z)
    return z


def test_linearize_and_make_fx_are_refused_by_name():
    W, x, z0 = _problem()

    def solve(w):
        return deq_solve(_f(w, x), z0, solver=FixedPoint(max_iter=50, tol=1e-8))[0]

    with pytest.raises(NotImplementedError, match="make_fx tracing are not supported"):
        torch.func.linearize(solve, W.detach())
    from torch.fx.experimental.proxy_tensor import make_fx

    with pytest.raises(NotImplementedError, match="make_fx tracing are not supported"):
        make_fx(solve)(W.detach())
