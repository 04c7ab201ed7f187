"""Registration of the public ops: torch.library.opcheck on every op and backend, and
torch.compile(fullgraph=True) over solver steps built from them."""
import pytest
import torch

from lmdeq import ops

from .helpers import assert_close, randn


def _samples():
    z, fz = randn((2, 3, 5), torch.float32, 0), randn((2, 3, 5), torch.float32, 1)
    zs = [randn((2, 4), torch.float32, 2), randn((2, 3, 2, 2), torch.float32, 3)]
    fzs = [randn((2, 4), torch.float32, 4), randn((2, 3, 2, 2), torch.float32, 5)]
    X, Fh = randn((2, 3, 7), torch.float32, 6), randn((2, 3, 7), torch.float32, 7)
    return {
        "fixed_point_update": (torch.ops.lmdeq.fixed_point_update, (z, fz, 0.5)),
        "fixed_point_update_grad": (torch.ops.lmdeq.fixed_point_update,
                                    (z.clone().requires_grad_(), fz.clone().requires_grad_(), 0.5)),
        "fixed_point_update_multi": (torch.ops.lmdeq.fixed_point_update_multi, (zs, fzs, 0.25)),
        "fixed_point_update_multi_grad": (torch.ops.lmdeq.fixed_point_update_multi,
                                          ([t.clone().requires_grad_() for t in zs], fzs, 0.25)),
        "anderson_gram_row": (torch.ops.lmdeq.anderson_gram_row, (X, Fh, 1)),
        "anderson_mix": (torch.ops.lmdeq.anderson_mix, (X, Fh, randn((2, 3), torch.float32, 8), 0.5)),
        "power_iteration_matrices": (torch.ops.lmdeq.power_iteration_matrices,
                                     ([randn((4, 3), torch.float32, 9), randn((2, 2, 3), torch.float32, 10)],
                                      [randn((4,), torch.float32, 11), randn((2,), torch.float32, 12)], 2)),
        "conv_power_iteration": (torch.ops.lmdeq.conv_power_iteration,
                                 ([randn((2, 3, 3, 3), torch.float32, 13), randn((3, 2, 1, 1), torch.float32, 14)],
                                  [randn((1, 3, 5, 5), torch.float32, 15), randn((1, 2, 3, 4), torch.float32, 16)],
                                  [2, 1], [1, 0], 1)),
    }


@pytest.mark.parametrize("name", list(_samples()))
def test_opcheck(backend, name):
    op, args = _samples()[name]
    torch.library.opcheck(op, args)


def test_every_public_op_is_a_registered_custom_op():
    for name in ops.OP_NAMES:
        assert hasattr(torch.ops.lmdeq, name), name


def test_compiled_solver_steps_match_eager():
    """A fixed-point step and an Anderson step on a list state, compiled with fullgraph=True."""
    torch._dynamo.reset()
    W = randn((6, 6), torch.float32, 20) * 0.3
    x = randn((3, 6), torch.float32, 21)

    def f(z):
        return torch.tanh(z @ W + x)

    def step(zs, X, Fh, alpha):
        z_next, res, fzn = ops.fixed_point_update_multi(zs, [f(zs[0]), 0.5 * zs[1]], 0.8)
        H = ops.anderson_gram_row(X, Fh, 1)
        mixed = ops.anderson_mix(X, Fh, alpha, 1.0)
        return z_next, res / fzn, H, mixed

    zs = [randn((3, 6), torch.float32, 22), randn((3, 2, 2), torch.float32, 23)]
    X, Fh = randn((3, 2, 6), torch.float32, 24), randn((3, 2, 6), torch.float32, 25)
    alpha = torch.full((3, 2), 0.5)
    compiled = torch.compile(step, fullgraph=True)
    got, want = compiled(zs, X, Fh, alpha), step(zs, X, Fh, alpha)
    for g, w in zip(got[0], want[0]):
        assert_close(g, w, what="compiled z_next")
    for g, w in zip(got[1:], want[1:]):
        assert_close(g, w, what="compiled output")
