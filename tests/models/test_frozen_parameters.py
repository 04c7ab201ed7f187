"""Per-solve freezing of derived parameters (conv W_eff and its input-scaled copies, GroupNorm scaled
gamma/beta): computed once per block, gradients still reach the raw parameters, also when the first use
is inside a no-grad solve; and the cell's in-place ReLUs never touch its inputs."""
import torch

from lmdeq.models import mdeq
from lmdeq.models.capped import CappedConv2d
from lmdeq.models.fusion import PostFusion
from lmdeq.models.normalization import MeanOnlyGroupNorm

from .tiny import TINY2, TINY3


def _rel(a, b):
    """Normwise relative difference (float64 results of the same ops in another order differ by rounding)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def test_group_norm_scaled_parameters_are_computed_once_and_keep_their_gradient(monkeypatch):
    torch.manual_seed(0)
    norm = MeanOnlyGroupNorm(2, 4, gamma_max=0.8).double()
    with torch.no_grad():
        norm.weight.uniform_(-1.0, 1.0)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    calls = []
    real = MeanOnlyGroupNorm.effective_gamma
    monkeypatch.setattr(MeanOnlyGroupNorm, "effective_gamma", lambda self: calls.append(1) or real(self))
    ref = norm(x, gamma_scale=0.4, beta_scale=0.3)
    (ref * x).sum().backward()
    want = [p.grad.clone() for p in norm.parameters()]
    norm.zero_grad()
    calls.clear()
    with norm.frozen():
        with torch.no_grad():                      # first use inside a no-grad solve
            norm(x, gamma_scale=0.4, beta_scale=0.3)
        out = norm(x, gamma_scale=0.4, beta_scale=0.3)
        norm(x, gamma_scale=0.4, beta_scale=0.3)
        assert calls == [1]
        norm(x)                                    # other scales: their own entry
        assert calls == [1, 1]
    (out * x).sum().backward()
    assert torch.equal(out, ref)
    for p, g in zip(norm.parameters(), want):
        assert _rel(p.grad, g) <= 1e-13   # the same float64 ops, accumulated in another order
    norm(x, gamma_scale=0.4, beta_scale=0.3)        # outside the block: recomputed at every call
    assert calls == [1, 1, 1]


def test_conv_input_scaled_weight_is_computed_once_per_block():
    torch.manual_seed(1)
    conv = CappedConv2d(4, 4, 1, weight_norm=True, cap=2.0).double()
    from lmdeq.models.constraints import update_norm_estimates

    update_norm_estimates([conv], 5)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    ref = conv(x, scale=0.4)
    (ref * x).sum().backward()
    want = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    with conv.frozen():
        with torch.no_grad():
            first = conv._scaled_weight(0.4)
        assert conv._scaled_weight(0.4) is first and first.requires_grad
        out = conv(x, scale=0.4)
    (out * x).sum().backward()
    assert _rel(out, ref) <= 1e-13
    for p, g in zip(conv.parameters(), want):
        assert _rel(p.grad, g) <= 1e-13


def test_f_never_writes_its_inputs():
    for lipschitz, tiny in ((True, TINY2), (True, TINY3), (False, TINY3)):
        torch.manual_seed(2)
        model = mdeq("cifar10-small", lipschitz=lipschitz, **tiny, dropout=0.2,
                     **({"init_power_iters": 2} if lipschitz else {})).double().train()
        f, z0 = model.fixed_point_problem(torch.randn(2, 3, 32, 32, dtype=torch.float64))
        z = [torch.randn_like(t) for t in z0]
        kept = [t.clone() for t in z]
        with torch.no_grad():
            f(z)
        f(z)   # with grad
        assert all(torch.equal(a, b) for a, b in zip(z, kept))


def test_post_fusion_keeps_its_input_unless_told():
    from lmdeq.models.cell_options import CellOptions

    torch.manual_seed(3)
    post = PostFusion(8, CellOptions(lipschitz=True, expansion=2, num_groups=4, dropout=0.0, weight_norm=True,
                                     s=0.4, conv_cap=2.0)).double()
    from lmdeq.models.constraints import update_norm_estimates

    update_norm_estimates([post.conv], 5)
    y = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    kept = y.clone()
    out = post(y)
    assert torch.equal(y, kept)
    assert torch.equal(post(y.clone(), inplace=True), out)
