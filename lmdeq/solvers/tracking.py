"""Per-sample convergence bookkeeping shared by the solvers, kept on the device.

Each solver step records the residuals of one estimate: abs = ||f(z) - z||, rel = abs / ||f(z)||
(per sample, l2 over the whole state), under a step label (the count that ``max_iter`` bounds). The
tracker keeps the traces, the lowest residuals, the step at which they were reached and the best
estimate so far (TorchDEQ's "lowest" semantics), all with tensor ops only. The host reads a flag back
only in :meth:`Tracker.should_stop`, every ``check_every`` steps, so a solve costs at most
``max_iter / check_every`` device syncs, and none with ``iterations=``.

The info layout (:mod:`lmdeq.solvers.info`): six keys as TorchDEQ names them (abs_lowest, rel_lowest,
abs_trace, rel_trace, nstep, sradius) plus ``converged``, ``f_evals``, ``result``; the traces have one column
per step the budget allows (B, ``capacity``; the first ``f_evals`` columns are measured, and after an early
stop the rest repeat the lowest residual, TorchDEQ's padding), so the infos of solves with equal budgets
always merge; the lowest residuals start at inf. A budget above :data:`TRACE_PAD_LIMIT` gives the measured
columns only (memory follows the solve, never ``max_iter``).

A solver asks its tracker two things besides ``record``: ``records_start`` (whether the initial guess is a step
of its own, Broyden's step 0) and ``step_residuals`` (the residuals a fixed-point step reports). An adapter with
another bookkeeping (TorchDEQ's, :mod:`lmdeq.integrations.torchdeq_solvers`) subclasses :class:`Tracker`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..numerics import acc_dtype, relative_residual
from .info import Result, SolverError, SolverInfo
from .state import StateLayout

__all__ = ["Tracker", "Columns", "default_check_every", "start_solve", "outcome_code", "padded_width",
           "TRACE_PAD_LIMIT", "DIVERGE_FACTOR"]

DIVERGE_FACTOR = 1e4
# Traces are padded to the step budget (so that the infos of solves with equal budgets merge) up to this many
# columns; a larger budget ("run until converged": max_iter=10**12) gives traces of the measured steps only, so
# that memory follows the solve, never max_iter.
TRACE_PAD_LIMIT = 4096


def padded_width(budget: int, measured: int) -> int:
    """Columns of a returned trace: the budget while it is at most TRACE_PAD_LIMIT, else the measured steps."""
    return budget if budget <= TRACE_PAD_LIMIT else measured


class Columns:
    """(rows, n) columns appended one at a time: storage for min(expected, TRACE_PAD_LIMIT) columns up front
    (a solve within the limit never reallocates, which a CUDA-graph capture relies on), doubled beyond."""

    def __init__(self, rows: int, expected: int, dtype, device):
        self.data = torch.zeros(rows, max(1, min(expected, TRACE_PAD_LIMIT)), dtype=dtype, device=device)
        self.n = 0

    def append(self, column: torch.Tensor) -> None:
        if self.n == self.data.shape[1]:
            grown = self.data.new_zeros(self.data.shape[0], 2 * self.data.shape[1])
            grown[:, :self.n] = self.data
            self.data = grown
        self.data[:, self.n] = column
        self.n += 1

    def measured(self) -> torch.Tensor:
        """The appended columns (a view)."""
        return self.data[:, :self.n]


def default_check_every(device: torch.device) -> int:
    """Default convergence-check period: every step on the CPU (reading a CPU flag costs nothing),
    every 4 steps on an accelerator (each check is a host sync that stalls the launch queue)."""
    return 1 if device.type == "cpu" else 4


def outcome_code(converged: torch.Tensor, nonfinite: torch.Tensor, diverged) -> torch.Tensor:
    """The (1,) float32 outcome code of :mod:`lmdeq.solvers.info`, on the device (no sync)."""
    code = torch.where(nonfinite.any(), 3.0, torch.where(converged.all(), 0.0, torch.where(diverged, 2.0, 1.0)))
    return code.to(torch.float32).reshape(1)


class Tracker:
    """Traces, lowest residuals, best estimate and snapshots of one solve (module docstring)."""

    records_start = True        # Broyden records its initial guess as step 0
    initial_lowest = float("inf")

    def __init__(self, layout: StateLayout, x0_parts: Sequence[torch.Tensor], capacity: int, tol: float,
                 stop_mode: str, snapshots=None, return_final: bool = False, check_every: Optional[int] = None):
        self.layout = layout
        self.tol = float(tol)
        self.stop_mode = stop_mode
        self.return_final = return_final
        self.check_every = check_every or default_check_every(layout.device)
        self.snapshots = sorted(set(int(i) for i in snapshots)) if snapshots else []
        acc = acc_dtype(layout.dtype)
        B, dev = layout.batch, layout.device
        self.capacity = capacity
        self.trace = {m: Columns(B, capacity, acc, dev) for m in ("abs", "rel")}
        self.lowest = {m: torch.full((B,), self.initial_lowest, dtype=acc, device=dev) for m in ("abs", "rel")}
        self.latest = dict(self.lowest)
        self.lowest_step = torch.zeros(B, dtype=torch.float32, device=dev)
        self.nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        self.best: List[torch.Tensor] = list(x0_parts)
        self.records = 0
        # Steps <= 0 ask for the estimate before any step: x0.
        self.trajectory: List = [layout.external([p.clone() for p in x0_parts]) for i in self.snapshots if i <= 0]

    def step_residuals(self, res: torch.Tensor, fz_norm: torch.Tensor, tau: float, z: Sequence[torch.Tensor]):
        """(abs, rel) residuals of a fixed-point step with ||f(z_k) - z_k|| = ``res`` and ||f(z_k)|| = ``fz_norm``
        (z = ``z``, the new iterate, for trackers that measure the damped step instead)."""
        return res, relative_residual(res, fz_norm)

    def record(self, abs_res: torch.Tensor, rel_res: torch.Tensor, estimate: Sequence[torch.Tensor], step: int,
               owned: bool = False):
        """Record the residuals of step ``step``. ``estimate`` (internal parts) is the point they vouch
        for; ``owned=True`` says the solver will not overwrite it later (no defensive copy needed)."""
        self.records += 1
        for mode, res in (("abs", abs_res), ("rel", rel_res)):
            res = res.to(self.trace[mode].data.dtype)
            self.trace[mode].append(res)
            self.latest[mode] = res
        self.nonfinite |= ~torch.isfinite(self.latest["abs"])
        for mode in ("abs", "rel"):
            res = self.latest[mode]
            better = torch.ones_like(res, dtype=torch.bool) if self.return_final else res < self.lowest[mode]
            self.lowest[mode] = torch.where(better, res, self.lowest[mode])
            if mode == self.stop_mode:
                self.lowest_step = torch.where(better, float(step), self.lowest_step)
                self._keep(better, estimate, owned)
        if step >= 1 and step in self.snapshots:
            self.trajectory.append(self.layout.external([b.clone() for b in self.best]))

    def _keep(self, better, estimate, owned):
        if self.return_final:
            self.best = list(estimate) if owned else [e.clone() for e in estimate]
            return
        self.best = [torch.where(better.view(-1, *([1] * (b.dim() - 1))), e, b) for e, b in zip(estimate, self.best)]

    def done(self) -> torch.Tensor:
        """(B,) bool: the samples the stopping rule counts as finished (lowest residual below tol)."""
        return self.lowest[self.stop_mode] < self.tol

    def should_stop(self) -> bool:
        """True when every sample is done or non-finite. Syncs with the device, but only every
        ``check_every`` recorded steps; otherwise returns False without touching the device."""
        if self.records % self.check_every:
            return False
        return bool((self.done() | self.nonfinite).all())

    def outcome(self, f_evals: int, raise_on_failure: bool = False, solver: str = "solver") -> Dict[str, torch.Tensor]:
        """lmdeq's outcome fields (converged, f_evals, result) on the device; raises :class:`SolverError` when
        asked and the solve failed (reads the device only then)."""
        crit = self.lowest[self.stop_mode]
        converged = (crit < self.tol) & ~self.nonfinite
        dev = crit.device
        n = self.records
        main = self.trace[self.stop_mode].measured()
        if n >= 2:
            diverged = (main[:, n - 1] > DIVERGE_FACTOR * main[:, 0]).any()
        else:
            diverged = torch.zeros((), dtype=torch.bool, device=dev)
        extras = {
            "converged": converged.to(torch.float32),
            "f_evals": torch.full((1,), float(f_evals), dtype=torch.float32, device=dev),
            "result": outcome_code(converged, self.nonfinite, diverged),
        }
        if raise_on_failure:
            result = Result.from_code(extras["result"])
            if result is not Result.CONVERGED:
                raise SolverError(
                    f"{solver} did not converge: result={result.value}, "
                    f"{int((~converged).sum())}/{converged.numel()} samples above {self.stop_mode} tol {self.tol:g} "
                    f"after {n} steps (lowest {self.stop_mode} residual max "
                    f"{float(crit.max()) if crit.numel() else 0.0:.3e})")
        return extras

    def finish(self, f_evals: int, raise_on_failure: bool = False, solver: str = "solver"):
        """``(z_star, snapshots, info)``; nothing is read back unless ``raise_on_failure``."""
        extras = self.outcome(f_evals, raise_on_failure, solver)
        info = self.six_keys()
        info.update(extras)
        return self.layout.external(self.best), self.finish_snapshots(), info

    def six_keys(self) -> SolverInfo:
        """The info items TorchDEQ names (lowest residuals, traces in this tracker's layout, nstep, sradius)."""
        return SolverInfo(abs_lowest=self.lowest["abs"], rel_lowest=self.lowest["rel"],
                          abs_trace=self._trace("abs"), rel_trace=self._trace("rel"), nstep=self.lowest_step,
                          sradius=torch.full((1,), -1.0, dtype=torch.float32, device=self.lowest_step.device))

    def finish_snapshots(self) -> List:
        """The snapshots, the final best estimate standing for the steps the solve never reached."""
        for _ in self.snapshots[len(self.trajectory):]:
            self.trajectory.append(self.layout.external([b.clone() for b in self.best]))
        return self.trajectory

    def _trace(self, mode: str) -> torch.Tensor:
        trace = self.trace[mode].measured()
        pad = padded_width(self.capacity, self.records) - self.records
        if pad == 0:
            return trace.contiguous()
        return torch.cat([trace, self.lowest[mode].unsqueeze(1).expand(trace.shape[0], pad)], dim=1)


def start_solve(solver, func, x0, steps: int, snapshots, tracker, capacity: Optional[int] = None):
    """The common start of every solver: (layout, checked func, tracker) for ``solver``'s settings. An exact
    solve returns its final iterate and never reads back; ``capacity`` is the number of records the solver may
    make (default: ``steps``)."""
    layout = StateLayout(x0)
    track = tracker(layout, layout.parts(x0), steps if capacity is None else capacity, solver.tol, solver.stop_mode,
                    snapshots, return_final=solver.exact, check_every=solver.check_every)
    return layout, layout.checked_func(func), track
