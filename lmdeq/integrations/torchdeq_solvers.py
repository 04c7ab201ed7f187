"""lmdeq's solvers under TorchDEQ 0.1.0's four names, with TorchDEQ's observable contract.

The adapter between TorchDEQ's function contract,

    solver(func, x0, max_iter=50, tol=1e-3, stop_mode='abs', indexing=None, **kwargs) -> (z_star, trajectory, info)

and lmdeq's solver objects (:mod:`lmdeq.solvers`): each function builds the solver its arguments describe and
runs it (:meth:`~lmdeq.solvers.Solver.run`, ``indexing`` as snapshots) with a bookkeeper that gives the info
layout asked for. ``TORCHDEQ_SOLVERS`` maps ``anderson``, ``broyden``, ``fixed_point_iter`` and
``simple_fixed_point_iter`` to functions with TorchDEQ's signatures and defaults and TorchDEQ's info layout
(:class:`TorchDEQTracker`; :func:`lmdeq.integrations.torchdeq.register` puts them into TorchDEQ's registry with
``replace=True``); ``LMDEQ_SOLVERS`` maps ``lmdeq_<name>`` for every name of :data:`lmdeq.solvers.SOLVERS` to
the same contract with lmdeq's info layout. TorchDEQ's cores pass the same options to every solver and configs
share one ``solver_kwargs`` between solvers, so an option that some solver knows (:data:`KNOWN_OPTIONS`) is
ignored quietly by the others; an option no solver knows warns once (:class:`UnknownOptionWarning`). lmdeq's
own options pass through the same keywords: ``check_every``, ``raise_on_failure``, ``iterations=N`` (exactly N
steps, no host sync: ``exact=True``), ``memory`` (Broyden, alias ``LBFGS_thres``). What a TorchDEQ user observes
under TorchDEQ's names is TorchDEQ's:

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

import dataclasses
import difflib
import warnings

import torch

from .. import checks, ops
from ..numerics import relative_residual
from ..solvers import SOLVERS, STOP_MODES, Anderson, Broyden, FixedPoint, SolverInfo, StateLayout, Tracker
from ..solvers.tracking import outcome_code, padded_width

__all__ = ["anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter", "TORCHDEQ_SOLVERS", "LMDEQ_SOLVERS",
           "TorchDEQTracker", "KNOWN_OPTIONS", "UnknownOptionWarning"]

TORCHDEQ_INIT = 1e8   # TorchDEQ's initial "lowest" residual and the first column of its traces

# Every option a solver of lmdeq or of TorchDEQ 0.1.0 takes through this contract.
KNOWN_OPTIONS = frozenset({
    "max_iter", "tol", "stop_mode", "indexing", "tau", "return_final",        # all solvers
    "m", "lam",                                                                # Anderson
    "memory", "LBFGS_thres", "ls",                                             # Broyden
    "check_every", "iterations", "raise_on_failure", "exact",                  # lmdeq
})
_reported: set = set()   # keys already warned about (see _warn_once)


class UnknownOptionWarning(UserWarning):
    """A solver got a keyword argument that no lmdeq or TorchDEQ solver takes (a misspelling?)."""


def _warn_once(key: str, message: str, category=UserWarning, stacklevel: int = 4) -> None:
    """``warnings.warn`` the first time ``key`` is seen, pointing ``stacklevel`` frames up (4: the caller of the
    solver function, for a call from the helper it calls)."""
    if key in _reported:
        return
    _reported.add(key)
    warnings.warn(message, category, stacklevel=stacklevel)


def warn_unknown_options(solver: str, options: dict, stacklevel: int = 2) -> None:
    """Warn once per process and option name about options in ``options`` that no solver knows; the warning
    points ``stacklevel`` frames above this call (2: the caller of the function that calls this one)."""
    for key in options:
        if key in KNOWN_OPTIONS:
            continue
        close = difflib.get_close_matches(key, sorted(KNOWN_OPTIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _warn_once(f"option:{key}", f"{solver} got solver option {key!r}, which neither lmdeq nor TorchDEQ knows: "
                   f"it is ignored{hint}", UnknownOptionWarning, stacklevel=stacklevel + 2)


def solver_for(cls, caller: str, max_iter, tol, stop_mode, options: dict):
    """The ``cls`` solver that a contract call's arguments describe: the fields ``cls`` has are taken from
    ``options`` (``LBFGS_thres`` is Broyden's ``memory``, ``iterations=N`` means ``max_iter=N, exact=True``),
    other known options are ignored, unknown ones warn once."""
    warn_unknown_options(caller, options, stacklevel=3)   # the solver function's caller
    if cls is Broyden and options.get("ls"):
        _warn_once("broyden:ls", "broyden: ls=True (TorchDEQ's line search) is not implemented by lmdeq; "
                   "solving without it")
    fields = {f.name for f in dataclasses.fields(cls)} - {"max_iter", "tol", "stop_mode"}
    own = {k: v for k, v in options.items() if k in fields and k != "iterations"}
    if cls is Broyden and options.get("LBFGS_thres") is not None:
        own["memory"] = options["LBFGS_thres"]
    max_iter = checks.count("max_iter", max_iter)
    iterations = options.get("iterations")
    if iterations is not None:
        max_iter, own["exact"] = checks.count("iterations", iterations), True
    return cls(max_iter=max_iter, tol=tol, stop_mode=stop_mode, **own)


def _tracking(cls, return_final: bool, **extra):
    """The tracker class for one call: ``cls`` with ``extra`` settings that also returns the final iterate when
    asked. A class, not a factory function: a solver reads class attributes of its tracker before making one
    (Broyden's ``records_start``)."""
    class Tracking(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, **extra)
            self.return_final = self.return_final or bool(return_final)

    Tracking.__name__ = Tracking.__qualname__ = cls.__name__
    return Tracking


class TorchDEQTracker(Tracker):
    """TorchDEQ 0.1.0's bookkeeping: exactly TorchDEQ's six info keys (lmdeq's converged, f_evals and result in
    ``info.extras``); the traces are (B, ``trace_width``) with a first column of 1e8, then the steps after the
    first ``hidden`` ones (Anderson's two set-up steps, which TorchDEQ never records), then (after an early stop)
    the lowest residuals repeated to the full width; the lowest residuals start at 1e8; the solve stops once
    every sample's *newest* residual is below tol (and never early with ``return_final``); Broyden's x0 is no
    step of its own; ``damped``: a fixed-point step's residuals are those of the damped map, tau ||f(z) - z||
    relative to ||T z||, as TorchDEQ's ``fixed_point_iter`` measures them."""

    records_start = False
    initial_lowest = TORCHDEQ_INIT

    def __init__(self, *args, trace_width: int, hidden: int = 0, damped: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace_width, self.hidden, self.damped = trace_width, hidden, damped

    def step_residuals(self, res, fz_norm, tau, z):
        if not self.damped:
            return super().step_residuals(res, fz_norm, tau, z)
        res = tau * res
        return res, relative_residual(res, self.layout.norm(z))

    def done(self):
        return self.latest[self.stop_mode] < self.tol

    def should_stop(self):
        return False if self.return_final else super().should_stop()

    def finish(self, f_evals, raise_on_failure=False, solver="solver"):
        extras = self.outcome(f_evals, raise_on_failure, solver)
        info = self.six_keys()
        info.extras = extras
        if self.trace_width == 1:  # TorchDEQ records no step then: its values keep its float32 start
            info.update({k: info[k].float() for k in ("abs_lowest", "rel_lowest", "abs_trace", "rel_trace")})
        return self.layout.external(self.best), self.finish_snapshots(), info

    def _trace(self, mode):
        trace = self.trace[mode].measured()
        B, lowest = trace.shape[0], self.lowest[mode].unsqueeze(1)
        shown = trace[:, min(self.hidden, self.records):]   # a slice: no index tensor, no copy
        pad = padded_width(self.trace_width - 1, shown.shape[1]) - shown.shape[1]
        cols = [torch.full((B, 1), TORCHDEQ_INIT, dtype=trace.dtype, device=trace.device), shown,
                lowest.expand(B, pad)]
        return torch.cat(cols, dim=1)


def anderson(func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None, m=6, lam=1e-4, tau=1.0,
             return_final=False, **kwargs):
    """TorchDEQ's ``anderson_solver`` contract, solved by :class:`lmdeq.solvers.Anderson`: the traces have
    TorchDEQ's width max(max_iter - 1, 1), which leaves out the first two steps (TorchDEQ's set-up steps, which
    it never records); they still count for the lowest residuals and the returned estimate."""
    solver = solver_for(Anderson, "anderson", max_iter, tol, stop_mode, dict(kwargs, m=m, lam=lam, tau=tau))
    tracker = _tracking(TorchDEQTracker, return_final, trace_width=max(solver.max_iter - 1, 1), hidden=2)
    return solver.run(func, x0, indexing, tracker)


def broyden(func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None, LBFGS_thres=None, ls=False,
            return_final=False, **kwargs):
    """TorchDEQ's ``broyden_solver`` contract, solved by :class:`lmdeq.solvers.Broyden`: ``LBFGS_thres=None``
    keeps every update (memory = the step budget)."""
    options = dict(kwargs, LBFGS_thres=LBFGS_thres, ls=ls)
    if LBFGS_thres is None and "memory" not in kwargs:
        budget = kwargs.get("iterations")
        options["LBFGS_thres"] = max(checks.count("max_iter", max_iter) if budget is None
                                     else checks.count("iterations", budget), 1)
    solver = solver_for(Broyden, "broyden", max_iter, tol, stop_mode, options)
    tracker = _tracking(TorchDEQTracker, return_final, trace_width=solver.max_iter + 1)
    return solver.run(func, x0, indexing, tracker)


def fixed_point_iter(func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None, tau=1.0, return_final=False,
                     **kwargs):
    """TorchDEQ's ``fixed_point_iter`` contract, solved by :class:`lmdeq.solvers.FixedPoint`; the residuals are
    those of the damped map, tau ||f(z) - z|| relative to ||T z||, as TorchDEQ measures them."""
    solver = solver_for(FixedPoint, "fixed_point_iter", max_iter, tol, stop_mode, dict(kwargs, tau=tau))
    tracker = _tracking(TorchDEQTracker, return_final, trace_width=solver.max_iter + 1, damped=solver.tau != 1.0)
    return solver.run(func, x0, indexing, tracker)


def _lmdeq_contract(name: str, cls):
    """``cls`` under TorchDEQ's function contract with lmdeq's info layout (the ``lmdeq_<name>`` names)."""
    def solve(func, x0, max_iter=50, tol=1e-3, stop_mode=None, indexing=None, return_final=False, **kwargs):
        if stop_mode is None:
            stop_mode = next(f.default for f in dataclasses.fields(cls) if f.name == "stop_mode")
        solver = solver_for(cls, name, max_iter, tol, stop_mode, kwargs)
        return solver.run(func, x0, indexing, _tracking(Tracker, return_final))

    solve.__name__ = solve.__qualname__ = f"lmdeq_{name}"
    solve.__doc__ = (f"lmdeq's {cls.__name__} under TorchDEQ's function contract, with lmdeq's info layout "
                     "(:mod:`lmdeq.integrations.torchdeq_solvers`).")
    return solve


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

LMDEQ_SOLVERS = {f"lmdeq_{name}": _lmdeq_contract(name, cls) for name, cls in SOLVERS.items()}
