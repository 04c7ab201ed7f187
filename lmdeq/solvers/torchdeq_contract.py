"""lmdeq's solvers under TorchDEQ 0.1.0's four names, with TorchDEQ's observable contract.

``TORCHDEQ_SOLVERS`` maps ``anderson``, ``broyden``, ``fixed_point_iter`` and
``simple_fixed_point_iter`` to functions with TorchDEQ's signatures and defaults
(:func:`lmdeq.integrations.torchdeq.register` puts them into TorchDEQ's registry with
``replace=True``). What a TorchDEQ user observes is TorchDEQ's:

* ``info`` holds exactly TorchDEQ's six keys, all tensors: ``abs_lowest``, ``rel_lowest``, ``nstep``
  (B,), ``sradius`` (1,), ``abs_trace``/``rel_trace`` (B, W) with a first column of 1e8, one column per
  step and, after an early stop, the lowest residual repeated to the full width W (max_iter + 1 for
  fixed_point_iter and broyden, max(max_iter - 1, 1) for anderson); residuals and lowest values in the
  state's dtype promoted with float32, ``nstep`` float32. lmdeq's ``converged``, ``f_evals`` and
  ``result`` are in ``info.extras`` (see :class:`~lmdeq.solvers.info.SolverInfo`);
* ``max_iter`` counts what TorchDEQ counts (f-evaluations; Broyden updates), ``max_iter=0`` returns
  x0, a tensor ``max_iter`` works, a solve stops once every sample's newest residual is below tol;
* Broyden keeps every update when ``LBFGS_thres`` is None (TorchDEQ's default; lmdeq's own
  ``broyden`` keeps 16);
* ``simple_fixed_point_iter`` runs exactly max_iter damped steps with no convergence monitoring and
  reports the last step only (traces of width 1, ``nstep`` = max_iter).

Where TorchDEQ silently gives wrong results these functions do better (README, "Switching from
TorchDEQ"): every ``indexing`` entry is returned, so a core never drops its IFT step; Anderson with
``max_iter <= 2`` returns real iterates, not x0; Broyden's trajectory entries are those of the indexed
step (TorchDEQ's are one step early); list states, and funcs without a ``tau`` argument, work.
"""
from __future__ import annotations

import torch

from .. import checks, ops
from .anderson import anderson as _anderson
from .broyden import broyden as _broyden
from .fixed_point import fixed_point as _fixed_point
from .info import SolverInfo
from .state import STOP_MODES, StateLayout, warn_unknown_options
from .tracking import outcome_code

__all__ = ["anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter", "TORCHDEQ_SOLVERS"]


def anderson(func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None, m=6, lam=1e-4, tau=1.0,
             return_final=False, **kwargs):
    """TorchDEQ's ``anderson_solver`` contract, solved by :func:`lmdeq.solvers.anderson`."""
    return _anderson(func, x0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing, m=m, lam=lam,
                     tau=tau, return_final=return_final, contract="torchdeq", **kwargs)


def broyden(func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None, LBFGS_thres=None, ls=False,
            return_final=False, **kwargs):
    """TorchDEQ's ``broyden_solver`` contract, solved by :func:`lmdeq.solvers.broyden`: ``LBFGS_thres=None``
    keeps every update (memory = the step budget)."""
    if LBFGS_thres is None and "memory" not in kwargs:
        budget = kwargs.get("iterations")
        LBFGS_thres = max(checks.count("max_iter", max_iter) if budget is None else checks.count("iterations", budget), 1)
    return _broyden(func, x0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                    LBFGS_thres=LBFGS_thres, ls=ls, return_final=return_final, contract="torchdeq", **kwargs)


def fixed_point_iter(func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None, tau=1.0, return_final=False,
                     **kwargs):
    """TorchDEQ's ``fixed_point_iter`` contract, solved by :func:`lmdeq.solvers.fixed_point`."""
    return _fixed_point(func, x0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing, tau=tau,
                        return_final=return_final, contract="torchdeq", **kwargs)


def simple_fixed_point_iter(func, x0, max_iter=50, tau=1.0, indexing=None, **kwargs):
    """Exactly ``max_iter`` damped steps z <- (1 - tau) z + tau func(z), no monitoring, no host sync.

    Returns the last iterate; ``indexing`` entries are the iterates after those steps. ``info`` reports
    the last step only, as TorchDEQ's does: abs = ||z_N - z_{N-1}||, rel = abs / (||z_N|| + 1e-8)
    (0 for ``max_iter=0``), traces of width 1, ``nstep`` = max_iter, in the state's dtype. ``tol`` and
    ``stop_mode`` (which TorchDEQ's cores pass) only decide ``info.extras['converged']``.
    """
    tol, stop_mode = kwargs.pop("tol", 1e-3), kwargs.pop("stop_mode", "abs")
    warn_unknown_options("simple_fixed_point_iter", kwargs)
    max_iter = checks.count("max_iter", max_iter)
    tau = checks.damping("tau", tau)
    checks.choice("stop_mode", stop_mode, STOP_MODES)
    layout = StateLayout(x0)
    f = layout.checked_func(func)
    wanted = set(int(i) for i in indexing) if indexing else set()
    z = layout.parts(x0)
    trajectory = [layout.external(z) for i in sorted(wanted) if i <= 0]
    step_norm = torch.zeros(layout.batch, device=layout.device)
    for k in range(max_iter):
        z, res, fz_norm = ops.fixed_point_update_multi(z, f(z), tau)
        step_norm = tau * res   # ||z_{k+1} - z_k|| = tau ||f(z_k) - z_k||
        if k + 1 in wanted:
            trajectory.append(layout.external(z))
    trajectory += [layout.external(z) for i in sorted(wanted) if i > max_iter]
    z_norm = fz_norm if max_iter and tau == 1.0 else layout.norm(z)
    abs_res = step_norm.to(layout.dtype)
    rel_res = (step_norm / (z_norm + 1e-8)).to(layout.dtype)
    dev = layout.device
    info = SolverInfo(abs_lowest=abs_res, rel_lowest=rel_res, abs_trace=abs_res.unsqueeze(1),
                      rel_trace=rel_res.unsqueeze(1),
                      nstep=torch.full((layout.batch,), float(max_iter), dtype=torch.float32, device=dev),
                      sradius=torch.full((1,), -1.0, dtype=torch.float32, device=dev))
    nonfinite = ~torch.isfinite(abs_res)
    crit = abs_res if stop_mode == "abs" else rel_res
    converged = (crit < tol) & ~nonfinite & (max_iter > 0)
    info.extras = {"converged": converged.to(torch.float32),
                   "f_evals": torch.full((1,), float(max_iter), dtype=torch.float32, device=dev),
                   "result": outcome_code(converged, nonfinite, torch.zeros((), dtype=torch.bool, device=dev))}
    return layout.external(z), trajectory, info


TORCHDEQ_SOLVERS = {
    "anderson": anderson,
    "broyden": broyden,
    "fixed_point_iter": fixed_point_iter,
    "simple_fixed_point_iter": simple_fixed_point_iter,
}
