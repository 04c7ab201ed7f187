"""Limited-memory Broyden's method ("good" Broyden on the inverse Jacobian) for g(z) = f(z) - z = 0.

The inverse Jacobian of g is approximated by  J^{-1} ~ -I + U V^T  with at most ``memory`` rank-one
terms (u_i, v_i) held in a ring buffer: the workspace is (B, memory, n) twice, whatever ``max_iter``.
A step is

    z_{k+1} = z_k - J^{-1} g_k = z_k + g_k - U (V^T g_k),

and after evaluating g_{k+1} the secant condition J^{-1} dg = dz (dz = z_{k+1} - z_k, dg = g_{k+1} - g_k)
adds the term  u = (dz - J^{-1} dg) / (v^T dg),  v^T = dz^T J^{-1}  (Sherman-Morrison). When the ring is
full the oldest term is overwritten. A sample whose denominator |v^T dg| is tiny or non-finite skips
its update, so the approximation never becomes undefined.
"""
from __future__ import annotations

import torch

from ..ops.reference import acc_dtype
from .state import check_positive_int, check_solver_args
from .tracking import start_solve

__all__ = ["broyden"]


def broyden(func, x0, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "abs", indexing=None,
            memory: int = 16, return_final: bool = False, check_every=None, iterations=None,
            raise_on_failure: bool = False, LBFGS_thres=None, **kwargs):
    """Solve z = func(z) with limited-memory Broyden (TorchDEQ solver contract).

    ``memory`` (alias TorchDEQ's ``LBFGS_thres``) bounds the number of stored rank-one updates. Each
    recorded step costs one f-evaluation; the estimate a step vouches for is the iterate z_k whose
    residual ||g(z_k)|| it records. Other arguments as in :func:`lmdeq.solvers.fixed_point`.
    """
    check_solver_args(max_iter, tol, stop_mode, check_every=check_every, iterations=iterations)
    if LBFGS_thres is not None:
        memory = LBFGS_thres
    check_positive_int("memory", memory)
    layout, f, steps, tracker = start_solve(func, x0, max_iter, tol, stop_mode, indexing, return_final,
                                            check_every, iterations)
    acc = acc_dtype(layout.dtype)
    U = torch.zeros(layout.batch, memory, layout.numel, dtype=acc, device=layout.device)
    V = torch.zeros_like(U)

    z = layout.pack(layout.parts(x0), layout.new_flat()).to(acc)
    g = _residual(f, layout, z)
    count = 0
    for k in range(steps):
        abs_res = torch.linalg.vector_norm(g, dim=1)
        fz_norm = torch.linalg.vector_norm(g + z, dim=1)
        tracker.record(abs_res, abs_res / (fz_norm + 1e-9), layout.views(z.to(layout.dtype)), owned=True)
        if iterations is None and tracker.should_stop():
            break
        if k + 1 == steps:
            break
        z_new = z + _apply_inv(U, V, g, count, memory)
        g_new = _residual(f, layout, z_new)
        dz, dg = z_new - z, g_new - g
        vt = -dz + _apply_inv_t(U, V, dz, count, memory)         # dz^T J^{-1}
        jdg = -dg + _apply_inv_low(U, V, dg, count, memory)      # J^{-1} dg
        denom = (vt * dg).sum(dim=1, keepdim=True)
        ok = torch.isfinite(denom) & (denom.abs() > 1e-30)
        u = torch.where(ok, (dz - jdg) / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(dz))
        slot = count % memory
        U[:, slot] = u
        V[:, slot] = torch.where(ok, vt, torch.zeros_like(vt))
        count += 1
        z, g = z_new, g_new
    # Every recorded step follows exactly one f-evaluation (g_0 = g(x0), then one per update).
    return tracker.finish(tracker.steps, checked=iterations is None, raise_on_failure=raise_on_failure, solver="broyden")


def _residual(f, layout, z_flat):
    """g(z) = f(z) - z for a flat (B, n) state, in z's dtype."""
    fz = f(layout.views(z_flat.to(layout.dtype)))
    out = layout.pack(fz, layout.new_flat()).to(z_flat.dtype)
    return out - z_flat


def _active(U, V, count, memory):
    n = min(count, memory)
    return U[:, :n], V[:, :n]


def _apply_inv_low(U, V, x, count, memory):
    """(U V^T) x for the active terms."""
    Ua, Va = _active(U, V, count, memory)
    if Ua.shape[1] == 0:
        return torch.zeros_like(x)
    return torch.einsum("bmn,bm->bn", Ua, torch.einsum("bmn,bn->bm", Va, x))


def _apply_inv_t(U, V, x, count, memory):
    """(V U^T) x, i.e. x^T (U V^T) as a row."""
    Ua, Va = _active(U, V, count, memory)
    if Ua.shape[1] == 0:
        return torch.zeros_like(x)
    return torch.einsum("bmn,bm->bn", Va, torch.einsum("bmn,bn->bm", Ua, x))


def _apply_inv(U, V, g, count, memory):
    """-J^{-1} g = g - U (V^T g)."""
    return g - _apply_inv_low(U, V, g, count, memory)
