"""The mean-only GroupNorm's written-out backward pass (normalization._MeanOnlyGroupNormFn): values and
gradients equal autograd through the plain formula (float64), forward-mode and torch.func derivatives
agree, and a vector-Jacobian product with respect to the input skips the parameter terms."""
import pytest
import torch

from lmdeq.models import normalization
from lmdeq.models.normalization import MeanOnlyGroupNorm


def plain(norm, x, gamma_scale, beta_scale):
    """gamma_scale * clip(gamma) * (x - group mean) + beta_scale * beta, by autograd's own ops (the clip
    with a straight-through gradient, as the layer documents)."""
    b, c = x.shape[:2]
    xg = x.reshape(b, norm.num_groups, -1)
    centred = (xg - xg.mean(-1, keepdim=True)).reshape(x.shape)
    if norm.weight is None:
        return centred * gamma_scale
    shape = (1, c) + (1,) * (x.dim() - 2)
    gamma = norm.weight + (norm.weight.clamp(-norm.gamma_max, norm.gamma_max) - norm.weight).detach()
    return centred * (gamma * gamma_scale).reshape(shape) + (norm.bias * beta_scale).reshape(shape)


def make(affine, groups=3, channels=6, seed=0):
    torch.manual_seed(seed)
    norm = MeanOnlyGroupNorm(groups, channels, affine=affine, gamma_max=0.8).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(-1.5, 1.5)    # some beyond the clip
            norm.bias.normal_()
    return norm


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / (b.norm() + 1e-300))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "non_contiguous", "batch_one"])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.4, 0.4), (0.3, 1.0)])
@pytest.mark.parametrize("affine", [True, False])
def test_values_and_all_gradients_equal_the_plain_formula(affine, scales, layout):
    norm = make(affine)
    shape = (1, 6, 5, 3) if layout == "batch_one" else (4, 6, 5, 3)
    x = torch.randn(shape, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        x = torch.randn(4, 5, 3, 6, dtype=torch.float64).permute(0, 3, 1, 2)
    x.requires_grad_()
    y, ref = norm(x, *scales), plain(norm, x, *scales)
    assert rel(y, ref) < 1e-13
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    w = torch.randn_like(ref)
    inputs = [x] + list(norm.parameters())
    got = torch.autograd.grad((y * w).sum(), inputs)
    want = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and rel(a, b) < 1e-12


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(affine):
    norm = make(affine, groups=2, channels=4)
    if affine:   # inside the clip, where the straight-through gradient is the true derivative
        with torch.no_grad():
            norm.weight.uniform_(-0.7, 0.7)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(norm.parameters())

    def fn(x, *p):
        return norm(x, gamma_scale=0.4, beta_scale=0.7)

    assert torch.autograd.gradcheck(fn, (x,) + params, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("affine", [True, False])
def test_function_transforms_agree_with_the_plain_formula(affine):
    norm = make(affine)
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    v, w = torch.randn_like(x), torch.randn_like(x)
    fn = lambda t: norm(t, gamma_scale=0.4, beta_scale=0.4)
    ref = lambda t: plain(norm, t, 0.4, 0.4)
    _, jv = torch.func.jvp(fn, (x,), (v,))
    _, jr = torch.func.jvp(ref, (x,), (v,))
    assert rel(jv, jr) < 1e-13
    _, vjp = torch.func.vjp(fn, x)
    _, vjr = torch.func.vjp(ref, x)
    assert rel(vjp(w)[0], vjr(w)[0]) < 1e-13
    if affine:   # forward-mode derivative with respect to the parameters as well
        params = {n: p.detach() for n, p in norm.named_parameters()}
        tangents = {n: torch.randn_like(p) for n, p in params.items()}
        call = lambda p: torch.func.functional_call(norm, p, (x, 0.4, 0.4))
        call_ref = lambda p: plain(_Bound(norm, p), x, 0.4, 0.4)
        assert rel(torch.func.jvp(call, (params,), (tangents,))[1],
                   torch.func.jvp(call_ref, (params,), (tangents,))[1]) < 1e-13


class _Bound:
    """The attributes plain() reads, with given parameter tensors."""

    def __init__(self, norm, params):
        self.num_groups, self.gamma_max = norm.num_groups, norm.gamma_max
        self.weight, self.bias = params["weight"], params["bias"]


def test_a_product_with_respect_to_the_input_skips_the_parameter_terms(monkeypatch):
    norm = make(True)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    calls = []
    real = normalization._group_means
    monkeypatch.setattr(normalization, "_group_means", lambda *a: calls.append(1) or real(*a))
    y = norm(x)
    calls.clear()                      # the forward's own mean
    w = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, [x], w, retain_graph=True)
    assert calls == []                 # dL/dgamma (the only user of x's mean in the backward) skipped
    assert norm.weight.grad is None
    y.backward(w)
    assert calls == [1] and norm.weight.grad is not None and norm.bias.grad is not None
    assert rel(x.grad, gx) < 1e-15


def test_reduced_precision_input_keeps_the_dtypes_of_the_plain_ops():
    # Under autocast the cell may pass a bf16 activation with fp32 parameters: the output dtype follows
    # type promotion exactly as the plain ops do, and each gradient has its input's dtype.
    norm = make(True).float()
    x = torch.randn(2, 6, 4, 4).bfloat16().requires_grad_()
    y = norm(x)
    assert y.dtype == plain(norm, x, 1.0, 1.0).dtype
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_model_training_step_unchanged_against_the_plain_formula(channels_last, monkeypatch):
    # The whole model, one training-mode forward and backward (solves, adjoint, gradients into every
    # parameter): the same logits and gradients with the written-out backward as with autograd's chain.
    from lmdeq.models import mdeq

    from .tiny import TINY3

    torch.manual_seed(6)
    model = mdeq("cifar10-small", **TINY3, dropout=0.2, init_power_iters=2).double().train()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        torch.manual_seed(9)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    out, grads = step()
    monkeypatch.setattr(MeanOnlyGroupNorm, "forward",
                        lambda self, x, gamma_scale=1.0, beta_scale=1.0: plain(self, x, gamma_scale, beta_scale))
    out_ref, grads_ref = step()
    assert rel(out, out_ref) < 1e-10 and len(grads) == len(grads_ref)
    scale = float(torch.cat([g.flatten() for g in grads_ref]).norm())
    for a, b in zip(grads, grads_ref):   # (some gradients are zero up to rounding: a GroupNorm follows)
        assert float((a - b).norm()) <= 1e-8 * float(b.norm()) + 1e-12 * scale
