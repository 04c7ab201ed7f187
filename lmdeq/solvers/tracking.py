"""Per-sample convergence bookkeeping shared by the solvers, kept on the device.

Every step a solver records the residuals of one estimate: abs = ||f(z) - z||, rel = abs / ||f(z)||
(per sample, l2 over the whole state). The tracker keeps the traces, the lowest residuals, the step
at which they were reached and the best estimate so far (TorchDEQ's "lowest" semantics), all with
tensor ops only. The host reads a flag back only in :meth:`Tracker.should_stop`, every
``check_every`` steps, so a solve costs at most ``max_iter / check_every`` device syncs, and none
with ``iterations=``.
"""
from __future__ import annotations

import enum
from typing import List, Optional, Sequence

import torch

from ..ops.reference import acc_dtype
from .state import StateLayout

__all__ = ["Result", "SolverError", "Tracker", "default_check_every", "start_solve"]

_REL_EPS = 1e-9


class Result(str, enum.Enum):
    """Outcome of a solve (``info['result']``)."""

    CONVERGED = "converged"      # every sample reached tol
    MAX_ITER = "max_iter"        # ran out of iterations with finite residuals
    DIVERGED = "diverged"        # the residual grew by more than ``diverge_factor`` over the solve
    NONFINITE = "nonfinite"      # some sample's residual was NaN/Inf (bad x0, or f produced NaN/Inf)
    UNCHECKED = "unchecked"      # ``iterations=`` mode: nothing was read back; see info['converged']

    def __str__(self):
        return self.value


class SolverError(RuntimeError):
    """Raised when ``raise_on_failure=True`` and a solve did not converge."""


def default_check_every(device: torch.device) -> int:
    """Default convergence-check period: every step on the CPU (reading a CPU flag costs nothing),
    every 4 steps on an accelerator (each check is a host sync that stalls the launch queue)."""
    return 1 if device.type == "cpu" else 4


class Tracker:
    """Traces, lowest residuals, best estimate and trajectory of one solve."""

    def __init__(self, layout, max_iter: int, tol: float, stop_mode: str, indexing=None,
                 return_final: bool = False, check_every: Optional[int] = None,
                 diverge_factor: float = 1e4):
        self.layout = layout
        self.tol = float(tol)
        self.stop_mode = stop_mode
        self.return_final = return_final
        self.check_every = check_every or default_check_every(layout.device)
        self.diverge_factor = diverge_factor
        self.indexing = sorted(set(int(i) for i in indexing)) if indexing else []
        acc = acc_dtype(layout.dtype)
        B, dev = layout.batch, layout.device
        self.abs_trace = torch.zeros(B, max_iter, dtype=acc, device=dev)
        self.rel_trace = torch.zeros(B, max_iter, dtype=acc, device=dev)
        self.lowest = {m: torch.full((B,), float("inf"), dtype=acc, device=dev) for m in ("abs", "rel")}
        self.lowest_step = {m: torch.zeros(B, dtype=acc, device=dev) for m in ("abs", "rel")}
        self.nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        self.best: Optional[List[torch.Tensor]] = None
        self.steps = 0
        self.trajectory: List = []

    def record(self, abs_res: torch.Tensor, rel_res: torch.Tensor, estimate: Sequence[torch.Tensor],
               owned: bool = False):
        """Record one step. ``estimate`` (internal parts) is the point these residuals vouch for;
        ``owned=True`` says the solver will not overwrite it later (no defensive copy needed)."""
        col = self.steps
        self.steps += 1
        abs_res = abs_res.to(self.abs_trace.dtype)
        rel_res = rel_res.to(self.rel_trace.dtype)
        self.abs_trace[:, col] = abs_res
        self.rel_trace[:, col] = rel_res
        self.nonfinite |= ~torch.isfinite(abs_res)
        step = float(self.steps)
        for mode, res in (("abs", abs_res), ("rel", rel_res)):
            better = res < self.lowest[mode]
            if self.return_final:
                better = torch.ones_like(better)
            self.lowest[mode] = torch.where(better, res, self.lowest[mode])
            self.lowest_step[mode] = torch.where(better, torch.full_like(self.lowest_step[mode], step),
                                                 self.lowest_step[mode])
            if mode == self.stop_mode:
                self._keep(better, estimate, owned)
        if self.steps in self.indexing:
            self.trajectory.append(self.layout.external([b.clone() for b in self.best]))

    def _keep(self, better, estimate, owned):
        if self.best is None or self.return_final:
            self.best = list(estimate) if owned else [e.clone() for e in estimate]
            return
        self.best = [torch.where(better.view(-1, *([1] * (b.dim() - 1))), e, b) for e, b in zip(estimate, self.best)]

    def should_stop(self) -> bool:
        """True when every sample has converged or gone non-finite. Syncs with the device, but only
        every ``check_every`` recorded steps; otherwise returns False without touching the device."""
        if self.steps % self.check_every:
            return False
        done = (self.lowest[self.stop_mode] < self.tol) | self.nonfinite
        return bool(done.all())

    def finish(self, f_evals: int, checked: bool = True, raise_on_failure: bool = False,
               solver: str = "solver"):
        """Build ``(z_star, trajectory, info)``. With ``checked=False`` (``iterations=`` mode) the
        result code is not read back (``Result.UNCHECKED``) unless ``raise_on_failure`` asks for it."""
        n = self.steps
        crit = self.lowest[self.stop_mode]
        converged = (crit < self.tol) & ~self.nonfinite
        info = {
            "abs_lowest": self.lowest["abs"],
            "rel_lowest": self.lowest["rel"],
            "abs_trace": self.abs_trace[:, :n],
            "rel_trace": self.rel_trace[:, :n],
            "nstep": self.lowest_step[self.stop_mode],
            "sradius": torch.full_like(crit, -1.0),
            "converged": converged,
            "f_evals": f_evals,
            "stop_mode": self.stop_mode,
            "tol": self.tol,
        }
        if checked or raise_on_failure:
            info["result"] = self._result(converged)
        else:
            info["result"] = Result.UNCHECKED
        if raise_on_failure and info["result"] is not Result.CONVERGED:
            raise SolverError(
                f"{solver} did not converge: result={info['result'].value}, "
                f"{int((~converged).sum())}/{converged.numel()} samples above {self.stop_mode} tol {self.tol:g} "
                f"after {n} steps (lowest {self.stop_mode} residual max {float(crit.max()) if crit.numel() else 0.0:.3e})")
        for idx in self.indexing[len(self.trajectory):]:
            # Steps the solve never reached (it stopped early): the final best estimate stands for them.
            self.trajectory.append(self.layout.external([b.clone() for b in self.best]))
        return self.layout.external(self.best), self.trajectory, info

    def _result(self, converged) -> Result:
        if self.nonfinite.any():
            return Result.NONFINITE
        if converged.all():
            return Result.CONVERGED
        n = self.steps
        trace = self.rel_trace if self.stop_mode == "rel" else self.abs_trace
        if n >= 2 and bool((trace[:, n - 1] > self.diverge_factor * trace[:, 0]).any()):
            return Result.DIVERGED
        return Result.MAX_ITER


def start_solve(func, x0, max_iter, tol, stop_mode, indexing, return_final, check_every, iterations):
    """The common start of every solver: (layout, checked func, step budget, tracker). ``iterations``
    fixes the step count and returns the final iterate (no read-back, see :class:`Tracker`)."""
    layout = StateLayout(x0)
    steps = iterations if iterations is not None else max_iter
    tracker = Tracker(layout, steps, tol, stop_mode, indexing,
                      return_final=return_final or iterations is not None, check_every=check_every)
    return layout, layout.checked_func(func), steps, tracker
