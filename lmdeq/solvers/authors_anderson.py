"""Anderson acceleration exactly as the Lipschitz-MDEQ authors release it (baseline (b)).

This is the semantics of ``anderson`` in iiduka-researches/Lipschitz_mdeq (lib/solvers.py, itself the
locuslab/deq solver), which the MDEQ-Vision code uses for both the forward and the adjoint solve. It is
kept apart from :func:`lmdeq.solvers.anderson` because it differs from it on purpose:

* the state is one flat vector per sample, x in R^{B x n}; the first two iterates are x_0 = x0 and
  x_1 = f(x_0), both unchecked, so the first convergence check is at the 3rd f-evaluation;
* step k >= 2 uses the n = min(k, m) newest pairs (ring slots), G_i = f(x_i) - x_i, and solves per sample

      [[0, 1^T], [1, G G^T + lam I]] [nu; alpha] = [1; 0]

  with an ABSOLUTE ridge ``lam`` (1e-4), in the state's dtype, then mixes
  x_k = tau sum_i alpha_i f(x_i) + (1 - tau) sum_i alpha_i x_i (ring slot k mod m);
* ONE residual pooled over the whole batch decides everything: abs_k = ||f(x_k) - x_k||_F over all
  samples together and rel_k = abs_k / (1e-5 + ||f(x_k)||_F); the solve stops as soon as the latest
  residual of ``stop_mode`` is below ``tol``;
* it returns the mixed iterate x_k (not f(x_k)) with the lowest pooled residual of ``stop_mode``.

With an absolute lam, once the residuals are small next to sqrt(lam) the Gram system is dominated by
lam I and the mixing degrades to averaging; lmdeq's own solver scales the ridge with the residuals and
stops per sample instead.

Info: the tensor-only :class:`~lmdeq.solvers.SolverInfo` of every lmdeq solver. The pooled residuals
are broadcast to every sample (abs_lowest, rel_lowest: (B,); abs_trace, rel_trace: (B, budget - 2), one
column per checked step, i.e. from the 3rd f-evaluation on, padded with the lowest residual after an early
stop); ``nstep`` counts the f-evaluations up to the returned iterate; ``converged`` is the batch's single
verdict, per sample; ``f_evals`` and the outcome code ``result`` are (1,).
"""
from __future__ import annotations

import torch

from .. import checks
from ..errors import ConfigError
from ..numerics import acc_dtype
from .state import StateLayout, check_solver_args
from .info import Result, SolverError, SolverInfo
from .tracking import DIVERGE_FACTOR, outcome_code, padded_width

__all__ = ["authors_anderson"]

_REL_EPS = 1e-5  # the released solver's denominator guard, 1e-5 + ||f(x)||


def authors_anderson(func, x0, max_iter: int = 50, tol: float = 1e-3, stop_mode: str = "rel", indexing=None,
                     m: int = 6, lam: float = 1e-4, tau: float = 1.0, iterations=None,
                     raise_on_failure: bool = False, **kwargs):
    """Solve z = func(z) with the released Anderson acceleration (TorchDEQ solver contract).

    ``max_iter`` is the released ``threshold`` (f-evaluations, >= 3), ``m`` the history size (>= 2),
    ``lam`` the absolute ridge (>= 0; 0 may leave the system singular, as in the released code, and then
    raises), ``tau`` the released ``beta`` (damping). ``iterations=N`` runs N f-evaluations with no early
    stop and no host sync; ``indexing`` returns, at those 1-based f-evaluation counts, the estimate the
    solver would return there (the latest iterate before the first check). Other keyword arguments
    (e.g. ``check_every``) are accepted and ignored: the released solver checks every step.
    """
    max_iter, iterations = check_solver_args(max_iter, tol, stop_mode, tau=tau, iterations=iterations)
    checks.integer("m", m, 2)   # the released solver keeps x_0 and x_1 before its first mix
    checks.number("lam", lam, 0)
    steps = iterations if iterations is not None else max_iter
    if steps < 3:
        name = "iterations" if iterations is not None else "max_iter"
        raise ConfigError(f"{name} must be >= 3 for authors_anderson (two unchecked f-evaluations, then the "
                         f"first checked one), got {steps}")
    layout = StateLayout(x0)
    f = layout.checked_func(func)
    B, dtype, dev = layout.batch, layout.dtype, layout.device
    X = layout.new_flat(m).zero_()
    Fx = layout.new_flat(m).zero_()
    layout.pack(layout.parts(x0), X[:, 0])
    layout.pack(f(layout.views(X[:, 0])), Fx[:, 0])
    X[:, 1].copy_(Fx[:, 0])
    layout.pack(f(layout.views(X[:, 1])), Fx[:, 1])
    H = torch.zeros(B, m + 1, m + 1, dtype=dtype, device=dev)
    H[:, 0, 1:] = 1.0
    H[:, 1:, 0] = 1.0
    rhs = torch.zeros(B, m + 1, 1, dtype=dtype, device=dev)
    rhs[:, 0] = 1.0
    eye = torch.eye(m, dtype=dtype, device=dev)

    acc = acc_dtype(dtype)
    checked = steps - 2
    trace = {mode: [] for mode in ("abs", "rel")}   # one 0-d tensor per checked step (never sized by max_iter)
    lowest = {mode: torch.full((), float("inf"), dtype=torch.float64, device=dev) for mode in ("abs", "rel")}
    lowest_at = {mode: torch.zeros((), dtype=torch.float64, device=dev) for mode in ("abs", "rel")}
    nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
    best = X[:, 1].clone()
    wanted = sorted(set(int(i) for i in indexing)) if indexing else []
    if wanted and wanted[0] < 1:
        raise ValueError(f"indexing holds 1-based f-evaluation counts, got {wanted[0]}")
    trajectory = [layout.external([p.clone() for p in layout.views(X[:, i - 1])]) for i in wanted if i <= 2]
    f_evals = 2
    for k in range(2, steps):
        n = min(k, m)
        G = Fx[:, :n] - X[:, :n]
        H[:, 1:n + 1, 1:n + 1] = torch.bmm(G, G.transpose(1, 2)) + lam * eye[:n, :n]
        alpha = torch.linalg.solve(H[:, :n + 1, :n + 1], rhs[:, :n + 1])[:, 1:n + 1, 0]
        slot = k % m
        mixed = tau * (alpha[:, None] @ Fx[:, :n])[:, 0] + (1 - tau) * (alpha[:, None] @ X[:, :n])[:, 0]
        X[:, slot] = mixed
        layout.pack(f(layout.views(X[:, slot])), Fx[:, slot])
        f_evals += 1
        # Pooled norms in the state's dtype, as released, then compared in double precision.
        res = {"abs": torch.linalg.vector_norm(Fx[:, slot] - X[:, slot]).to(torch.float64)}
        res["rel"] = res["abs"] / (_REL_EPS + torch.linalg.vector_norm(Fx[:, slot]).to(torch.float64))
        nonfinite |= ~torch.isfinite(res["abs"])
        for mode in ("abs", "rel"):
            trace[mode].append(res[mode])
            better = res[mode] < lowest[mode]
            lowest[mode] = torch.where(better, res[mode], lowest[mode])
            lowest_at[mode] = torch.where(better, torch.full_like(lowest_at[mode], k + 1), lowest_at[mode])
            if mode == stop_mode:
                keep = better | (k == 2)  # the first checked iterate stands until a better one (NaN-safe)
                best = torch.where(keep, X[:, slot], best)
        if f_evals in wanted:
            trajectory.append(layout.external([p.clone() for p in layout.views(best)]))
        if iterations is None and bool((res[stop_mode] < tol) | nonfinite):
            break
    for _ in wanted[len(trajectory):]:
        trajectory.append(layout.external([p.clone() for p in layout.views(best)]))

    done = checked if iterations is not None else f_evals - 2
    converged = (lowest[stop_mode] < tol) & ~nonfinite
    per_sample = lambda t: t.to(acc).expand(B).clone()  # noqa: E731 (pooled value, one per sample)

    def padded(mode):  # (B, width): the checked steps, padded with the lowest residual after an early stop
        width = padded_width(checked, done)
        cols = torch.cat([torch.stack(trace[mode][:done]), lowest[mode].expand(width - done)])
        return cols.to(acc).expand(B, width).clone()

    main = trace[stop_mode]
    diverged = (main[done - 1] > DIVERGE_FACTOR * main[0]) if done >= 2 else torch.zeros((), dtype=torch.bool,
                                                                                           device=dev)
    info = SolverInfo(
        abs_lowest=per_sample(lowest["abs"]), rel_lowest=per_sample(lowest["rel"]),
        abs_trace=padded("abs"), rel_trace=padded("rel"), nstep=per_sample(lowest_at[stop_mode]),
        sradius=torch.full((1,), -1.0, dtype=torch.float32, device=dev),
        converged=converged.expand(B).to(torch.float32), f_evals=torch.full((1,), float(f_evals), device=dev),
        result=outcome_code(converged, nonfinite, diverged))
    if raise_on_failure and info.result is not Result.CONVERGED:
        raise SolverError(f"authors_anderson did not converge: result={info.result.value}, pooled {stop_mode} "
                          f"residual {float(lowest[stop_mode]):.3e} (tol {tol:g}) after {f_evals} f-evaluations")
    return layout.external(layout.views(best)), trajectory, info
