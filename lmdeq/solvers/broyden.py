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

import torch

from .. import checks
from ..numerics import acc_dtype
from .state import check_solver_args, warn_once, warn_unknown_options
from .tracking import start_solve

__all__ = ["broyden"]


def broyden(func, x0, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "abs", indexing=None,
            memory: int = 16, return_final: bool = False, check_every=None, iterations=None,
            raise_on_failure: bool = False, LBFGS_thres=None, contract: str = "lmdeq", **kwargs):
    """Solve z = func(z) with limited-memory Broyden (TorchDEQ solver contract).

    A step is one Broyden update, as in TorchDEQ: ``max_iter`` (or ``iterations``) bounds the updates,
    and a solve of k updates costs k + 1 f-evaluations (g(x0), then one per update). Step 0 is x0 itself
    (its residual is the first trace column; ``contract='torchdeq'`` leaves it out, as TorchDEQ does);
    step k vouches for the k-th iterate z_k. ``memory`` (alias TorchDEQ's ``LBFGS_thres``) bounds the
    number of stored rank-one updates. ``ls`` (TorchDEQ's line search) is not implemented: ``ls=True``
    warns and runs without one. Other arguments as in :func:`lmdeq.solvers.fixed_point`.
    """
    warn_unknown_options("broyden", kwargs)
    if kwargs.get("ls"):
        warn_once("broyden:ls", "broyden: ls=True (TorchDEQ's line search) is not implemented by lmdeq; "
                  "solving without it")
    max_iter, iterations = check_solver_args(max_iter, tol, stop_mode, check_every=check_every,
                                             iterations=iterations)
    if LBFGS_thres is not None:
        memory = LBFGS_thres
    checks.integer("memory", memory, 1)
    budget = iterations if iterations is not None else max_iter
    own = contract == "lmdeq"
    layout, f, steps, tracker = start_solve(func, x0, max_iter, tol, stop_mode, indexing, return_final,
                                            check_every, iterations, contract=contract,
                                            capacity=budget + 1 if own else budget, trace_width=budget + 1)
    if steps == 0:
        return tracker.finish(0, raise_on_failure=raise_on_failure, solver="broyden")
    acc = acc_dtype(layout.dtype)
    # Slots for the updates the solve can make (at most steps - 1 and memory), allocated as they are needed
    # beyond the first 64: TorchDEQ's LBFGS_thres=None means memory = max_iter, which may be huge.
    needed = min(memory, max(steps - 1, 1))
    U = torch.zeros(layout.batch, min(needed, _FIRST_SLOTS), layout.numel, dtype=acc, device=layout.device)
    V = torch.zeros_like(U)

    z = layout.pack(layout.parts(x0), layout.new_flat()).to(acc)
    g = _residual(f, layout, z)
    f_evals = 1
    if own:
        _record(tracker, layout, z, g, step=0)
        if iterations is None and tracker.should_stop():
            return tracker.finish(f_evals, raise_on_failure=raise_on_failure, solver="broyden")
    count = 0
    for k in range(steps):
        z_new = z + _apply_inv(U, V, g, count, memory)
        g_new = _residual(f, layout, z_new)
        f_evals += 1
        _record(tracker, layout, z_new, g_new, step=k + 1)
        if (iterations is None and tracker.should_stop()) or k + 1 == steps:
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
    return tracker.finish(f_evals, raise_on_failure=raise_on_failure, solver="broyden")


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
    tracker.record(abs_res, abs_res / (fz_norm + 1e-9), layout.views(z.to(layout.dtype)), step=step, owned=True)


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
