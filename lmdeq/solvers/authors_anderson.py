"""Anderson acceleration exactly as the Lipschitz-MDEQ authors release it (baseline (b)).

This is the semantics of ``anderson`` in iiduka-researches/Lipschitz_mdeq (lib/solvers.py, itself the
locuslab/deq solver), which the MDEQ-Vision code uses for both the forward and the adjoint solve. It is
kept apart from :func:`lmdeq.solvers.anderson` because it differs from it on purpose:

* the state is one flat vector per sample, x in R^{B x n}; the first two iterates are x_0 = x0 and
  x_1 = f(x_0), both unchecked, so the first convergence check is at the 3rd f-evaluation;
* step k >= 2 uses the n = min(k, m) newest pairs (ring slots), G_i = f(x_i) - x_i, and solves per sample

      ``[[0, 1^T], [1, G G^T + lam I]] [nu; alpha] = [1; 0]``

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

from dataclasses import dataclass

import torch

from .. import checks
from ..errors import ConfigError
from ..numerics import acc_dtype
from .base import Solver, register_solver
from .info import Result, SolverError, SolverInfo
from .state import StateLayout
from .tracking import DIVERGE_FACTOR, outcome_code, padded_width

__all__ = ["AuthorsAnderson"]

_REL_EPS = 1e-5   # the released relative residual's floor: abs / (1e-5 + ||f(x)||)


@register_solver
@dataclass(frozen=True, kw_only=True)
class AuthorsAnderson(Solver):
    """The released Anderson acceleration (module docstring). ``max_iter`` is the released ``threshold``
    (f-evaluations, >= 3), ``m`` the history size (>= 2), ``lam`` the absolute ridge (>= 0; 0 may leave the
    system singular, as in the released code, and then raises), ``tau`` the released ``beta`` (damping).
    ``exact`` runs max_iter f-evaluations with no early stop and no host sync, and still returns the
    lowest-residual iterate (the released solver's answer, unlike the other solvers' last iterate); snapshots (:meth:`run`) are the
    estimates the solver would return at those 1-based f-evaluation counts (the latest iterate before the first
    check). ``check_every`` is ignored: the released solver checks every step."""

    name = "authors_anderson"
    stop_mode: str = "rel"
    m: int = 6
    lam: float = 1e-4
    tau: float = 1.0

    def _check(self, where):
        set_ = object.__setattr__
        set_(self, "m", checks.integer("m", self.m, 2, where=where))   # x_0 and x_1 are kept before the first mix
        set_(self, "lam", checks.number("lam", self.lam, 0, where=where))
        set_(self, "tau", checks.damping("tau", self.tau, where=where))
        if isinstance(self.max_iter, int) and self.max_iter < 3:
            raise ConfigError(f"{where}max_iter must be >= 3 (two unchecked f-evaluations, then the first checked "
                              f"one), got {self.max_iter}")

    def _run(self, func, x0, steps, snapshots, tracker):
        return _released_anderson(func, x0, steps, self.exact, self.tol, self.stop_mode, self.m, self.lam, self.tau,
                                  snapshots, self.raise_on_failure)


def _released_anderson(func, x0, steps, exact, tol, stop_mode, m, lam, tau, indexing, raise_on_failure):
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
        raise ValueError(f"AuthorsAnderson: snapshots are 1-based f-evaluation counts, got {wanted[0]}")
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
        if not exact and bool((res[stop_mode] < tol) | nonfinite):
            break
    for _ in wanted[len(trajectory):]:
        trajectory.append(layout.external([p.clone() for p in layout.views(best)]))

    done = checked if exact else f_evals - 2
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
