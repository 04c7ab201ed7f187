"""deq_solve marks the state it passes to the tracked evaluation f(z*) and flags it once the adjoint solve
of the running backward pass is done (lmdeq.deq.is_solved_state / adjoint_done)."""
import torch

from lmdeq.deq import JFB, Implicit, Phantom, adjoint_done, deq_solve, is_solved_state
from lmdeq.solvers import FixedPoint


def test_the_tracked_state_is_marked_and_flagged_after_the_adjoint():
    w = torch.nn.Parameter(0.3 * torch.eye(4, dtype=torch.float64))
    x = torch.randn(2, 4, dtype=torch.float64)
    received = []

    def f(z):
        received.append(z)
        # flags seen by an operator inside f during the backward pass
        return torch.tanh(Spy.apply(z) @ w + x)

    class Spy(torch.autograd.Function):
        seen = []

        @staticmethod
        def forward(ctx, z):
            ctx.z = received[-1]
            return z.view_as(z)

        @staticmethod
        def backward(ctx, g):
            Spy.seen.append(adjoint_done(ctx.z))
            return g

    z, info = deq_solve(f, torch.zeros(2, 4, dtype=torch.float64), solver=FixedPoint(max_iter=50, tol=1e-10),
                        backward=Implicit(solver=FixedPoint(max_iter=50, tol=1e-10)))
    solve_calls, tracked = received[:-1], received[-1]
    assert not any(is_solved_state(t) for t in solve_calls)     # the forward solve's iterates are not
    assert is_solved_state(tracked) and not adjoint_done(tracked)
    z.sum().backward(retain_graph=True)
    b_evals = Spy.seen.count(False)
    assert b_evals >= 1 and Spy.seen == [False] * b_evals + [True]   # adjoint products, then the gradient pass
    assert adjoint_done(tracked) and w.grad is not None
    Spy.seen.clear()
    z.sum().backward()                                            # a repeated pass solves the adjoint again
    assert Spy.seen == [False] * b_evals + [True]


def test_other_backward_modes_mark_nothing():
    received = []

    def f(z):
        received.append(z)
        return 0.5 * z + 1.0

    z0 = torch.zeros(3, 2, requires_grad=False)
    for mode in (JFB(), Phantom(), None):
        received.clear()
        deq_solve(f, z0, solver=FixedPoint(max_iter=30), backward=mode)
        assert not any(is_solved_state(t) for t in received)
