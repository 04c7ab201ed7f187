"""Small DEQ programs written against TorchDEQ's API only, run once per solver registry.

``tensor``: z = tanh(W z + U x) on a (B, 6) state, ||W||_2 = 0.6 (a contraction).
``mdeq``: an MDEQ-like two-resolution list state, a (B, 2, 3, 3) branch and a (B, 4) branch, each
updated from both (a pooled / broadcast exchange as in MDEQ's fusion), func(*z) -> list; with
``no_stat=False`` TorchDEQ's core flattens it for the solver, with ``no_stat=True`` (the default for
``simple_fixed_point_iter``) it passes the list itself.

Everything is float64 and seeded, so two runs differ only by the solvers behind the names.
"""
import torch
import torch.nn.functional as F
from torch import nn

import torchdeq

B = 3


class TensorCell(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        W = torch.randn(6, 6, generator=g, dtype=torch.float64)
        self.W = nn.Parameter(0.6 * W / torch.linalg.matrix_norm(W, 2))
        self.U = nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))

    def inputs(self):
        g = torch.Generator().manual_seed(1)
        return torch.randn(B, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def z0(self):
        return torch.zeros(B, 6, dtype=torch.float64)

    def func(self, x):
        u = x @ self.U.T
        return lambda z: torch.tanh(z @ self.W.T + u)

    @staticmethod
    def loss(z):
        return (z ** 2).sum() + z.sin().sum()


class MDEQCell(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        K = torch.randn(18, 18, generator=g, dtype=torch.float64)
        self.K = nn.Parameter(0.4 * K / torch.linalg.matrix_norm(K, 2))   # mixes the high-resolution branch
        self.A = nn.Parameter(0.2 * torch.randn(4, 2, generator=g, dtype=torch.float64))
        self.Bm = nn.Parameter(0.2 * torch.randn(2, 4, generator=g, dtype=torch.float64))
        self.C = nn.Parameter(0.3 * torch.eye(4, dtype=torch.float64))

    def inputs(self):
        g = torch.Generator().manual_seed(3)
        return torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def z0(self):
        return [torch.zeros(B, 2, 3, 3, dtype=torch.float64), torch.zeros(B, 4, dtype=torch.float64)]

    def func(self, x):
        def f(hi, lo):
            down = F.adaptive_avg_pool2d(hi, 1).flatten(1)              # (B, 2): high -> low resolution
            up = (lo @ self.Bm.T)[:, :, None, None]                      # (B, 2, 1, 1): low -> high, broadcast
            mixed = (hi.flatten(1) @ self.K.T).view_as(hi)
            new_hi = torch.tanh(mixed + 0.3 * up + x)
            new_lo = torch.tanh(lo @ self.C.T + down @ self.A.T + 0.5)
            return [new_hi, new_lo]

        return f

    @staticmethod
    def loss(z):
        return sum((t ** 2).sum() + t.sin().sum() for t in z)


PROGRAMS = {"tensor": TensorCell, "mdeq": MDEQCell}


def as_list(z):
    return [z] if torch.is_tensor(z) else list(z)


def run(program, solver, core="sliced", n_states=1, ift=False, f_max_iter=20, stop_mode="abs", f_tol=1e-6,
        b_solver=None, solver_kwargs=None, train=True, seed=None, deq=None):
    """One forward (and, in training, backward) pass of a TorchDEQ DEQ; returns a dict of what a TorchDEQ
    user can observe: the returned states, info, the gradients of the parameters and the input, and the
    infos the backward pass reported to ``backward_writer``. ``seed`` draws other inputs; ``deq`` is a
    prebuilt DEQ module to use instead of ``get_deq``."""
    cell = PROGRAMS[program]()
    x = cell.inputs()
    if seed is not None:
        x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype, requires_grad=True)
    b_solver = b_solver or ("fixed_point_iter" if solver == "simple_fixed_point_iter" else solver)
    if deq is None:
        deq = torchdeq.get_deq(core=core, f_solver=solver, b_solver=b_solver, ift=ift, n_states=n_states,
                               f_max_iter=20, b_max_iter=40, f_tol=f_tol, b_tol=1e-9, f_stop_mode=stop_mode,
                               b_stop_mode=stop_mode)
    deq.train(train)
    kwargs = {"f_max_iter": f_max_iter, **(solver_kwargs or {})}
    backward_infos = []
    z_out, info = deq(cell.func(x), cell.z0(), solver_kwargs=kwargs, backward_writer=backward_infos.append)
    out = {"z": [[t.detach() for t in as_list(z)] for z in z_out], "info": info, "backward_infos": backward_infos}
    if train and z_out:  # (TorchDEQ's solvers may return no state at all; the core then returns [])
        loss = sum(cell.loss(z) for z in z_out)
        params = list(cell.parameters()) + [x]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out["grads"] = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    return out
