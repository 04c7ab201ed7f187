"""The upkeep of the Lipschitz MDEQ's constraint after each optimiser step, and the cached certified bound.

Per ``constraint`` (:data:`lmdeq.models.presets.CONSTRAINTS`): 'certified' refreshes every conv's norm
estimate with warm-started power iterations (the effective weights use them at the next forward); 'released'
runs the authors' released cap instead (authors_cap.py); 'none' touches no conv. Then the GroupNorm gammas are
clipped to [-gamma_max, gamma_max]. The original MDEQ has no constraint.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .authors_cap import ReleasedConvCap
from .mdeq_cell import MDEQCell
from .norm_estimates import update_norm_estimates

__all__ = ["ConstraintUpkeep", "CachedBound"]


class ConstraintUpkeep:
    """The constraint of ``model`` (whose f is ``cell``) per ``cfg``; a certified model's estimates are made
    now, with ``init_power_iters`` iterations."""

    def __init__(self, model: nn.Module, cell: MDEQCell, cfg: dict):
        self.cell = cell
        self.lipschitz = cfg["lipschitz"]
        self.certified = self.lipschitz and cfg["constraint"] == "certified"
        self.power_iters, self.init_power_iters = cfg.get("power_iters"), cfg.get("init_power_iters")
        self.convs = cell.convs()
        released = self.lipschitz and cfg["constraint"] == "released"
        self.released_cap = ReleasedConvCap(model, cfg["conv_cap"]) if released else None
        if self.certified:
            update_norm_estimates(self.convs, self.init_power_iters)

    @torch.no_grad()
    def step(self, n_iter: Optional[int] = None) -> None:
        """After an optimiser step: the conv constraint (``n_iter`` power iterations, default ``power_iters``),
        then the gamma clip."""
        if not self.lipschitz:
            return
        if self.released_cap is not None:
            self.released_cap.apply_()
        elif self.certified:
            update_norm_estimates(self.convs, self.power_iters if n_iter is None else n_iter)
        for norm in self.cell.gamma_clipped_norms():
            norm.project_()

    def refresh_stale(self) -> None:
        """Re-estimate, with ``init_power_iters`` iterations, the convs whose weights changed in place since
        their last estimate: the safety net for a missed step or a manual weight edit, where the change may be
        too large for a few warm-started iterations. (Loading a state dict restores weights and estimates
        together and counts as current.)"""
        if self.lipschitz:
            stale = [c for c in self.convs if c.estimate_is_stale()]
            if stale:
                update_norm_estimates(stale, self.init_power_iters)


class CachedBound:
    """``cell.lipschitz_bound()``, recomputed only when the mode or a parameter or buffer of the cell changed
    (tensor versions)."""

    def __init__(self, cell: MDEQCell):
        self.cell = cell
        self._key, self._value = None, None

    def __call__(self) -> float:
        cell = self.cell
        key = (cell.training,) + tuple(t._version for t in cell.parameters()) + tuple(
            t._version for t in cell.buffers())
        if self._key != key:
            self._key, self._value = key, cell.lipschitz_bound()
        return self._value
