"""Anderson acceleration (type II, Walker & Ni form) with damping.

History buffers X_i, F_i = f(X_i) (i < m, a ring) and residuals G_i = F_i - X_i. Each step solves

    min_alpha ||sum_i alpha_i G_i||^2  s.t.  sum_i alpha_i = 1

through the bordered system ``[[0, 1^T], [1, G G^T + reg I]] [nu; alpha] = [1; 0]`` and mixes

    x_next = sum_i alpha_i ((1 - tau) X_i + tau F_i).

The Gram matrix G G^T is kept across steps: only the row/column of the newest entry is computed
(``lmdeq.ops.anderson_gram_row``, one pass over the history), and the mixing is one pass as well
(``lmdeq.ops.anderson_mix``). The regulariser is relative to the residual scale,
reg = lam * mean diag(G G^T), so the method behaves the same at every residual size (an absolute ``lam``,
as in TorchDEQ, swamps G G^T once residuals fall below sqrt(lam) and degrades Anderson to averaging). The small system is solved in float64 with
``torch.linalg.solve_ex`` (no host sync); a sample whose system is singular or gives non-finite weights
falls back to a plain damped step from its newest iterate, so the output is always defined.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks, ops
from ..numerics import relative_residual
from .base import Solver, register_solver
from .tracking import start_solve

__all__ = ["Anderson"]


@register_solver
@dataclass(frozen=True, kw_only=True)
class Anderson(Solver):
    """Anderson acceleration (module docstring): history size ``m`` (>= 1), Gram regulariser ``lam`` (>= 0,
    relative), damping ``tau``. Step k (1-based) is the k-th f-evaluation; the estimate it vouches for is
    f(x_k) (as in TorchDEQ). Every step counts, from the first: ``max_iter=1`` returns f(x0) and
    ``max_iter=2`` one plain step further."""

    name = "anderson"
    m: int = 6
    lam: float = 1e-4
    tau: float = 1.0

    def _check(self, where):
        set_ = object.__setattr__
        set_(self, "m", checks.integer("m", self.m, 1, where=where))
        set_(self, "lam", checks.number("lam", self.lam, 0, where=where))
        set_(self, "tau", checks.damping("tau", self.tau, where=where))

    def _run(self, func, x0, steps, snapshots, tracker):
        m = self.m
        layout, f, track = start_solve(self, func, x0, steps, snapshots, tracker)
        B = layout.batch
        X = layout.new_flat(m).zero_()
        Fh = layout.new_flat(m).zero_()
        gram = torch.zeros(B, m, m, dtype=torch.float64, device=layout.device)
        eye = torch.eye(m, dtype=torch.float64, device=layout.device)

        layout.pack(layout.parts(x0), X[:, 0])
        x_next = None
        for k in range(steps):
            slot = k % m
            if x_next is not None:
                X[:, slot].copy_(x_next)
            fx = f(layout.views(X[:, slot]))
            layout.pack(fx, Fh[:, slot])
            row = ops.anderson_gram_row(X, Fh, slot).to(torch.float64)
            gram[:, slot, :] = row
            gram[:, :, slot] = row
            res = row[:, slot].clamp_min(0).sqrt()
            fx_norm = torch.linalg.vector_norm(Fh[:, slot], dim=1).to(torch.float64)
            track.record(res, relative_residual(res, fx_norm), layout.views(Fh[:, slot]), step=k + 1)
            if not self.exact and track.should_stop():
                break
            if k + 1 == steps:
                break
            n = min(k + 1, m)
            alpha = _mixing_weights(gram[:, :n, :n], eye[:n, :n], self.lam, slot, n)
            full = torch.zeros(B, m, dtype=X.dtype, device=X.device)
            full[:, :n] = alpha.to(X.dtype)
            x_next = ops.anderson_mix(X, Fh, full, self.tau)
        return track.finish(track.records, raise_on_failure=self.raise_on_failure, solver=self.name)


def _mixing_weights(gram: torch.Tensor, eye: torch.Tensor, lam: float, newest: int, n: int) -> torch.Tensor:
    """alpha (B, n) minimising ||G^T alpha|| with sum(alpha) = 1; falls back to e_newest per sample."""
    B = gram.shape[0]
    reg = lam * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)
    H = gram.new_zeros(B, n + 1, n + 1)
    H[:, 0, 1:] = 1.0
    H[:, 1:, 0] = 1.0
    H[:, 1:, 1:] = gram + reg.view(B, 1, 1) * eye
    rhs = gram.new_zeros(B, n + 1, 1)
    rhs[:, 0] = 1.0
    sol, info = torch.linalg.solve_ex(H, rhs)
    alpha = sol[:, 1:, 0]
    ok = (info == 0) & torch.isfinite(alpha).all(dim=1)
    fallback = torch.zeros_like(alpha)
    fallback[:, newest] = 1.0
    return torch.where(ok.view(B, 1), alpha, fallback)
