"""Per-sample convergence bookkeeping shared by the solvers, kept on the device.

Each solver step records the residuals of one estimate: abs = ||f(z) - z||, rel = abs / ||f(z)||
(per sample, l2 over the whole state), under a step label (the count that ``max_iter`` bounds). The
tracker keeps the traces, the lowest residuals, the step at which they were reached and the best
estimate so far (TorchDEQ's "lowest" semantics), all with tensor ops only. The host reads a flag back
only in :meth:`Tracker.should_stop`, every ``check_every`` steps, so a solve costs at most
``max_iter / check_every`` device syncs, and none with ``iterations=``.

Two info layouts (``contract``, see :mod:`lmdeq.solvers.info`):

* ``'lmdeq'``: TorchDEQ's six keys plus ``converged``, ``f_evals``, ``result``; the traces have one
  column per step the budget allows (B, ``capacity``; the first ``f_evals`` columns are measured, and
  after an early stop the rest repeat the lowest residual, TorchDEQ's padding), so the infos of solves
  with equal budgets always merge; the lowest residuals start at inf. A budget above
  :data:`TRACE_PAD_LIMIT` gives the measured columns only (memory follows the solve, never ``max_iter``).
* ``'torchdeq'``: exactly TorchDEQ 0.1.0's six keys; the traces are (B, ``trace_width``) with a first
  column of 1e8, then the steps after the first ``hidden`` ones (Anderson's two set-up steps, which
  TorchDEQ never records), then (after an early stop) the lowest residuals repeated to
  the full width; the lowest residuals start at 1e8 and the solve stops once every sample's *newest*
  residual is below tol (TorchDEQ's rule). lmdeq's extra fields are in ``info.extras``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .. import checks
from ..numerics import acc_dtype
from .info import Result, SolverError, SolverInfo
from .state import StateLayout

__all__ = ["Tracker", "Columns", "default_check_every", "start_solve", "CONTRACTS", "outcome_code",
           "padded_width", "TRACE_PAD_LIMIT"]

CONTRACTS = ("lmdeq", "torchdeq")
TORCHDEQ_INIT = 1e8   # TorchDEQ's initial "lowest" residual and the first column of its traces
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
    """Traces, lowest residuals, best estimate and trajectory of one solve."""

    def __init__(self, layout: StateLayout, x0_parts: Sequence[torch.Tensor], capacity: int, tol: float,
                 stop_mode: str, indexing=None, return_final: bool = False, check_every: Optional[int] = None,
                 contract: str = "lmdeq", trace_width: Optional[int] = None, hidden: int = 0):
        checks.choice("contract", contract, CONTRACTS)
        self.layout = layout
        self.tol = float(tol)
        self.stop_mode = stop_mode
        self.return_final = return_final
        self.check_every = check_every or default_check_every(layout.device)
        self.contract = contract
        self.trace_width = trace_width
        self.hidden = hidden
        self.indexing = sorted(set(int(i) for i in indexing)) if indexing else []
        acc = acc_dtype(layout.dtype)
        B, dev = layout.batch, layout.device
        init = TORCHDEQ_INIT if contract == "torchdeq" else float("inf")
        self.capacity = capacity
        self.trace = {m: Columns(B, capacity, acc, dev) for m in ("abs", "rel")}
        self.lowest = {m: torch.full((B,), init, dtype=acc, device=dev) for m in ("abs", "rel")}
        self.latest = dict(self.lowest)
        self.lowest_step = torch.zeros(B, dtype=torch.float32, device=dev)
        self.nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        self.best: List[torch.Tensor] = list(x0_parts)
        self.records = 0
        # Indices <= 0 ask for the estimate before any step: x0 (TorchDEQ's cores pass [0] for f_max_iter=0).
        self.trajectory: List = [layout.external([p.clone() for p in x0_parts]) for i in self.indexing if i <= 0]

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
        if step >= 1 and step in self.indexing:
            self.trajectory.append(self.layout.external([b.clone() for b in self.best]))

    def _keep(self, better, estimate, owned):
        if self.return_final:
            self.best = list(estimate) if owned else [e.clone() for e in estimate]
            return
        self.best = [torch.where(better.view(-1, *([1] * (b.dim() - 1))), e, b) for e, b in zip(estimate, self.best)]

    def should_stop(self) -> bool:
        """True when every sample has converged or gone non-finite. Syncs with the device, but only
        every ``check_every`` recorded steps; otherwise returns False without touching the device."""
        if self.records % self.check_every:
            return False
        if self.contract == "torchdeq":
            if self.return_final:
                return False
            done = self.latest[self.stop_mode] < self.tol
        else:
            done = self.lowest[self.stop_mode] < self.tol
        return bool((done | self.nonfinite).all())

    def finish(self, f_evals: int, raise_on_failure: bool = False, solver: str = "solver"):
        """Build ``(z_star, trajectory, info)``; nothing is read back unless ``raise_on_failure``."""
        n = self.records
        crit = self.lowest[self.stop_mode]
        converged = (crit < self.tol) & ~self.nonfinite
        dev = crit.device
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
        info = SolverInfo(abs_lowest=self.lowest["abs"], rel_lowest=self.lowest["rel"],
                          abs_trace=self._trace("abs"), rel_trace=self._trace("rel"), nstep=self.lowest_step,
                          sradius=torch.full((1,), -1.0, dtype=torch.float32, device=dev))
        if self.contract == "torchdeq":
            info.extras = extras
            if self.trace_width == 1:  # TorchDEQ records no step then: its values keep its float32 start
                info.update({k: info[k].float() for k in ("abs_lowest", "rel_lowest", "abs_trace", "rel_trace")})
        else:
            info.update(extras)
        if raise_on_failure:
            result = info.result
            if result is not Result.CONVERGED:
                raise SolverError(
                    f"{solver} did not converge: result={result.value}, "
                    f"{int((~converged).sum())}/{converged.numel()} samples above {self.stop_mode} tol {self.tol:g} "
                    f"after {n} steps (lowest {self.stop_mode} residual max "
                    f"{float(crit.max()) if crit.numel() else 0.0:.3e})")
        for _ in self.indexing[len(self.trajectory):]:
            # Steps the solve never reached (it stopped early): the final best estimate stands for them.
            self.trajectory.append(self.layout.external([b.clone() for b in self.best]))
        return self.layout.external(self.best), self.trajectory, info

    def _trace(self, mode: str) -> torch.Tensor:
        trace = self.trace[mode].measured()
        B, lowest = trace.shape[0], self.lowest[mode].unsqueeze(1)
        if self.contract == "lmdeq":
            pad = padded_width(self.capacity, self.records) - self.records
            if pad == 0:
                return trace.contiguous()
            return torch.cat([trace, lowest.expand(B, pad)], dim=1)
        shown = trace[:, min(self.hidden, self.records):]   # a slice: no index tensor, no copy
        pad = padded_width(self.trace_width - 1, shown.shape[1]) - shown.shape[1]
        cols = [torch.full((B, 1), TORCHDEQ_INIT, dtype=trace.dtype, device=trace.device), shown,
                lowest.expand(B, pad)]
        return torch.cat(cols, dim=1)


def start_solve(func, x0, max_iter, tol, stop_mode, indexing, return_final, check_every, iterations,
                contract="lmdeq", capacity=None, trace_width=None, hidden=0):
    """The common start of every solver: (layout, checked func, step budget, tracker). ``iterations``
    fixes the step count and returns the final iterate (no read-back, see :class:`Tracker`);
    ``capacity`` is the number of records the solver may make (default: the step budget)."""
    layout = StateLayout(x0)
    steps = iterations if iterations is not None else max_iter
    tracker = Tracker(layout, layout.parts(x0), steps if capacity is None else capacity, tol, stop_mode,
                      indexing, return_final=return_final or iterations is not None, check_every=check_every,
                      contract=contract, trace_width=trace_width, hidden=hidden)
    return layout, layout.checked_func(func), steps, tracker
