"""Limited-memory Broyden's method ("good" Broyden on the inverse Jacobian) for g(z) = f(z) - z = 0.

The inverse Jacobian of g is approximated by  J^{-1} ~ -I + U V^T  with at most ``memory`` rank-one
terms (u_i, v_i) held in a ring buffer: the workspace is (B, k, n) twice with k the number of terms in use
(at most ``memory``, grown as updates are made), whatever ``max_iter``.
A step is

    z_{k+1} = z_k - J^{-1} g_k = z_k + g_k - U (V^T g_k),

and after evaluating g_{k+1} the secant condition J^{-1} dg = dz (dz = z_{k+1} - z_k, dg = g_{k+1} - g_k)
adds the term  u = (dz - J^{-1} dg) / (v^T dg),  v^T = dz^T J^{-1}  (Sherman-Morrison). When the ring is
full the oldest term is overwritten. A sample whose denominator |v^T dg| is tiny or non-finite skips
its update, so the approximation never becomes undefined.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks
from ..numerics import acc_dtype, relative_residual
from .base import Solver, register_solver
from .tracking import start_solve

__all__ = ["Broyden"]


@register_solver
@dataclass(frozen=True, kw_only=True)
class Broyden(Solver):
    """Limited-memory Broyden (module docstring), at most ``memory`` (>= 1) stored rank-one updates.

    A step is one Broyden update, as in TorchDEQ: ``max_iter`` bounds the updates, and a solve of k updates
    costs k + 1 f-evaluations (g(x0), then one per update). Step 0 is x0 itself (its residual is the first
    trace column); step k vouches for the k-th iterate z_k."""

    name = "broyden"
    memory: int = 16

    def _check(self, where):
        object.__setattr__(self, "memory", checks.integer("memory", self.memory, 1, where=where))

    def _run(self, func, x0, steps, snapshots, tracker):
        memory = self.memory
        start = tracker.records_start
        layout, f, track = start_solve(self, func, x0, steps, snapshots, tracker,
                                       capacity=steps + 1 if start else steps)
        if steps == 0:
            return track.finish(0, raise_on_failure=self.raise_on_failure, solver=self.name)
        acc = acc_dtype(layout.dtype)
        # Slots for the updates the solve can make (at most steps - 1 and memory), allocated as they are needed
        # beyond the first 64: a memory as large as max_iter (TorchDEQ's LBFGS_thres=None) may be huge.
        needed = min(memory, max(steps - 1, 1))
        U = torch.zeros(layout.batch, min(needed, _FIRST_SLOTS), layout.numel, dtype=acc, device=layout.device)
        V = torch.zeros_like(U)

        z = layout.pack(layout.parts(x0), layout.new_flat()).to(acc)
        g = _residual(f, layout, z)
        f_evals = 1
        if start:
            _record(track, layout, z, g, step=0)
            if not self.exact and track.should_stop():
                return track.finish(f_evals, raise_on_failure=self.raise_on_failure, solver=self.name)
        count = 0
        for k in range(steps):
            z_new = z + _apply_inv(U, V, g, count, memory)
            g_new = _residual(f, layout, z_new)
            f_evals += 1
            _record(track, layout, z_new, g_new, step=k + 1)
            if (not self.exact and track.should_stop()) or k + 1 == steps:
                break
            dz, dg = z_new - z, g_new - g
            vt = -dz + _apply_inv_t(U, V, dz, count, memory)         # dz^T J^{-1}
            jdg = -dg + _apply_inv_low(U, V, dg, count, memory)      # J^{-1} dg
            denom = (vt * dg).sum(dim=1, keepdim=True)
            ok = torch.isfinite(denom) & (denom.abs() > 1e-30)
            u = torch.where(ok, (dz - jdg) / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(dz))
            slot = count % memory
            if slot == U.shape[1]:   # every slot in use and the ring not yet full: double it (up to ``needed``)
                U, V = _grown(U, needed), _grown(V, needed)
            U[:, slot] = u
            V[:, slot] = torch.where(ok, vt, torch.zeros_like(vt))
            count += 1
            z, g = z_new, g_new
        return track.finish(f_evals, raise_on_failure=self.raise_on_failure, solver=self.name)


_FIRST_SLOTS = 64


def _grown(ring: torch.Tensor, limit: int) -> torch.Tensor:
    """``ring`` (B, k, n) with k doubled (at most ``limit``), the new slots zero."""
    grown = ring.new_zeros(ring.shape[0], min(2 * ring.shape[1], limit), ring.shape[2])
    grown[:, :ring.shape[1]] = ring
    return grown


def _record(tracker, layout, z, g, step):
    """Record iterate z (flat, accumulation dtype) with residual g = f(z) - z."""
    abs_res = torch.linalg.vector_norm(g, dim=1)
    fz_norm = torch.linalg.vector_norm(g + z, dim=1)
    tracker.record(abs_res, relative_residual(abs_res, fz_norm), layout.views(z.to(layout.dtype)), step=step, owned=True)


def _residual(f, layout, z_flat):
    """g(z) = f(z) - z for a flat (B, n) state, in z's dtype."""
    fz = f(layout.views(z_flat.to(layout.dtype)))
    out = layout.pack(fz, layout.new_flat()).to(z_flat.dtype)
    return out - z_flat


def _active(U, V, count, memory):
    n = min(count, memory)
    return U[:, :n], V[:, :n]


# The products are spelt with the small operand first ("bn,bmn->bm", "bm,bmn->bn"): einsum then maps them to
# a batched (1 x n) @ (n x m) product that reads the ring's active slice U[:, :m] in place; spelt the other way
# round ("bmn,bn->bm") it becomes bmm(U[:, :m], x) and copies the non-contiguous slice first (4-5x slower on
# CPU for MDEQ-small's 30,720-float states: the bulk of the original MDEQ's Broyden time).
def _apply_inv_low(U, V, x, count, memory):
    """(U V^T) x for the active terms."""
    Ua, Va = _active(U, V, count, memory)
    if Ua.shape[1] == 0:
        return torch.zeros_like(x)
    return torch.einsum("bm,bmn->bn", torch.einsum("bn,bmn->bm", x, Va), Ua)


def _apply_inv_t(U, V, x, count, memory):
    """(V U^T) x, i.e. x^T (U V^T) as a row."""
    Ua, Va = _active(U, V, count, memory)
    if Ua.shape[1] == 0:
        return torch.zeros_like(x)
    return torch.einsum("bm,bmn->bn", torch.einsum("bn,bmn->bm", x, Ua), Va)


def _apply_inv(U, V, g, count, memory):
    """-J^{-1} g = g - U (V^T g)."""
    return g - _apply_inv_low(U, V, g, count, memory)
