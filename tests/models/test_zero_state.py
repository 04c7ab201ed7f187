"""The zero-state path of the cell: f at the initial iterate z0 = 0 skips the convolutions of zero and runs
the sample-independent part of each block on one sample; it must be the same function as the full
evaluation (values and gradients, float64), be taken exactly when z is the untouched zero state, and
keep the state's memory format."""
import pytest
import torch

from lmdeq import FixedPoint, Implicit
from lmdeq.models import mdeq
from lmdeq.models.residual_block import ResidualBlock

from .tiny import TINY2, TINY3, original_solves


def _model(lipschitz, tiny, solves=None, **kw):
    extra = {"init_power_iters": 2} if lipschitz else (solves or original_solves(6, 6))
    return mdeq("cifar10-small", lipschitz=lipschitz, **tiny, **extra, **kw).double()


@pytest.mark.parametrize("batch, channels_last", [(1, False), (3, True)], ids=["B1-nchw", "B3-channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("tiny", [TINY2, TINY3], ids=["2br", "3br"])
@pytest.mark.parametrize("lipschitz", [True, False], ids=["lipschitz", "original"])
def test_f_at_the_zero_state_equals_the_full_evaluation(lipschitz, tiny, train, channels_last, batch):
    torch.manual_seed(0)
    model = _model(lipschitz, tiny, dropout=0.3).train(train)
    x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        f, z0 = model.fixed_point_problem(x)
        assert model.cell.is_zero_state(z0)
        fast, full = f(z0), f([t.clone() for t in z0])
    for a, b in zip(fast, full):
        assert a.shape == b.shape and a.stride() == b.stride()
        assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())
    assert any(float(t.abs().max()) > 0 for t in full)


def test_the_zero_path_runs_the_block_convolutions_on_one_sample(monkeypatch):
    torch.manual_seed(1)
    model = _model(True, TINY2).train()
    batches = []
    for blk in model.cell.blocks:
        for conv in (blk.conv1, blk.conv2):
            conv.register_forward_pre_hook(lambda mod, args: batches.append(args[0].shape[0]))
    f, z0 = model.fixed_point_problem(torch.randn(4, 3, 32, 32, dtype=torch.float64))
    with torch.no_grad():
        f(z0)
        assert batches == [1] * 4
        batches.clear()
        f([t.clone() for t in z0])
        assert batches == [4] * 4


def test_the_zero_path_is_taken_only_for_the_untouched_zero_state():
    torch.manual_seed(2)
    model = _model(True, TINY2)
    cell = model.cell
    f, z0 = model.fixed_point_problem(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert cell.is_zero_state(z0) and cell.is_zero_state([t.detach().reshape(t.shape) for t in z0])
    assert not cell.is_zero_state([t.clone() for t in z0])           # other storage
    assert not cell.is_zero_state(z0[:1])                            # other structure
    assert not cell.is_zero_state([t.requires_grad_() for t in [u.detach() for u in z0]])   # wants grad wrt z
    assert not cell.is_zero_state([z0[0][:1], z0[1]])                 # other shape, same storage start
    _, newer = model.fixed_point_problem(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert cell.is_zero_state(newer) and not cell.is_zero_state(z0)  # only the latest zero state
    newer[0].add_(1.0)                                               # written in place: no longer zero
    assert not cell.is_zero_state(newer)
    with torch.no_grad():
        out = f(newer)
        ref = f([t.clone() for t in newer])
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


@pytest.mark.parametrize("lipschitz", [True, False], ids=["lipschitz", "original"])
def test_parameter_gradients_through_the_zero_path_equal_the_full_evaluation(lipschitz):
    torch.manual_seed(3)
    model = _model(lipschitz, TINY3, dropout=0.2).train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(7)
    f, z0 = model.fixed_point_problem(x)
    params = [p for p in model.parameters()]

    def grads(z):
        out = f(z)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in out)
        return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)

    fast, full = grads(z0), grads([t.clone() for t in z0])
    assert sum(g is not None for g in full) > 0
    for a, b in zip(fast, full):
        assert (a is None) == (b is None)
        if b is not None:
            assert float((a - b).norm()) <= 1e-10 * (float(b.norm()) + 1e-30)


@pytest.mark.parametrize("lipschitz", [True, False], ids=["lipschitz", "original"])
def test_training_step_logits_and_gradients_unchanged_by_the_zero_path(lipschitz, monkeypatch):
    # (Broyden and Anderson iterate on a flat buffer, so f never sees the zero state itself; the original
    # variant is run with fixed-point solves here to exercise its cell on the zero path.)
    torch.manual_seed(4)
    solves = None if lipschitz else dict(
        forward=FixedPoint(max_iter=6, tol=1e-3, stop_mode="rel"),
        backward=Implicit(solver=FixedPoint(max_iter=6, tol=1e-3, stop_mode="rel"), x0="zeros"))
    model = _model(lipschitz, TINY2, solves, dropout=0.25).train()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)

    def step():
        torch.manual_seed(11)   # the same dropout masks
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    taken = []
    original = ResidualBlock.forward_at_zero
    monkeypatch.setattr(ResidualBlock, "forward_at_zero", lambda self, *a: taken.append(1) or original(self, *a))
    out_fast, grads_fast = step()
    assert taken   # the solve's first evaluation took the zero path
    monkeypatch.setattr(type(model.cell), "is_zero_state", lambda self, z: False)
    out_full, grads_full = step()
    assert float((out_fast - out_full).norm() / out_full.norm()) <= 1e-6
    for a, b in zip(grads_fast, grads_full):
        assert float((a - b).norm()) <= 1e-6 * (float(b.norm()) + 1e-30)


def test_dropout_shared_input_needs_one_sample():
    torch.manual_seed(5)
    model = _model(True, TINY2, dropout=0.5).train()
    drop = model.cell.blocks[0].drop
    drop.reset_mask(3, 8, torch.device("cpu"), torch.float64)
    one = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    assert torch.equal(drop(one, shared=True), drop(one.expand(3, 8, 4, 4).contiguous()))
    with pytest.raises(RuntimeError, match="reset_mask"):
        drop(one)                                       # a batch-1 input without shared=True: wrong batch
    with pytest.raises(RuntimeError, match="reset_mask"):
        drop(torch.randn(3, 8, 4, 4, dtype=torch.float64), shared=True)
