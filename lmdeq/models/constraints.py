"""The upkeep of the Lipschitz MDEQ's constraint after each optimiser step: the conv-norm estimates it maintains,
and the cached certified bound.

Per ``constraint`` (:data:`lmdeq.models.presets.CONSTRAINTS`): 'certified' refreshes every conv's norm
estimate with warm-started power iterations (the effective weights use them at the next forward); 'released'
runs the authors' released cap instead (authors_cap.py); 'none' touches no conv. Then the GroupNorm gammas are
clipped to [-gamma_max, gamma_max]. The original MDEQ has no constraint.

Norm estimates (:func:`update_norm_estimates`, a batched power-iteration refresh of the operator-norm estimates of
:class:`DEQConv2d` layers): all capped k x k convolutions go through one ``lmdeq.ops.conv_power_iteration`` call
(power iteration on A^T A, where A x = conv2d(x, W) on the layer's input size and A^T is the matching
conv_transpose2d), and all 1x1 convolutions through one ``lmdeq.ops.power_iteration_matrices`` call, so a fused
kernel can treat every layer at once. Vectors are persistent (warm start), so a few iterations per training step
track the slowly moving weights.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .. import checks, ops
from .authors_cap import ReleasedConvCap
from .deq_conv import DEQConv2d
from .mdeq_cell import MDEQCell

__all__ = ["update_norm_estimates", "ConstraintUpkeep", "CachedBound"]


@torch.no_grad()
def update_norm_estimates(convs: Sequence[DEQConv2d], n_iter: int) -> None:
    """Run ``n_iter`` warm-started power iterations for each capped conv and store the estimates."""
    n_iter = checks.integer("n_iter", n_iter, 1)
    capped = [c for c in convs if c.cap is not None]
    spatial = [c for c in capped if c.kernel_size > 1]
    pointwise = [c for c in capped if c.kernel_size == 1]
    if spatial:
        sigmas, vectors = ops.conv_power_iteration(
            [c.unscaled_weight().detach() for c in spatial], [c.power_vector for c in spatial],
            [c.stride for c in spatial], [c.padding for c in spatial], n_iter)
        for conv, sigma, vec in zip(spatial, sigmas, vectors):
            conv.set_estimate(sigma, vec)
    if pointwise:
        sigmas, vectors = ops.power_iteration_matrices(
            [c.unscaled_weight().detach().reshape(c.out_channels, c.in_channels) for c in pointwise],
            [c.power_vector for c in pointwise], n_iter)
        for conv, sigma, vec in zip(pointwise, sigmas, vectors):
            conv.set_estimate(sigma, vec)


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
