"""The upkeep of a certified f after each optimiser step, for any module tree: the norm estimates of its capped
layers, the gamma projection of its mean-only GroupNorms, the frozen weights of a solve, and the cached bound.

* :func:`refresh_norm_estimates` (``module``, n_iter): every capped layer (:class:`~lmdeq.models.CappedConv2d`,
  :class:`~lmdeq.models.CappedLinear`) found anywhere in ``module`` refreshed at once by
  :func:`update_norm_estimates`: all capped k x k convolutions through one ``lmdeq.ops.conv_power_iteration``
  call (power iteration on A^T A, where A x = conv2d(x, W) on the layer's input size and A^T is the matching
  conv_transpose2d), all 1x1 convolutions and linear layers through one ``lmdeq.ops.power_iteration_matrices``
  call, so a fused kernel treats every layer at once. Vectors are persistent (warm start), so a few iterations per
  training step track the slowly moving weights. Then the composed-norm estimates of the tree, if any
  (composed.py), which read the refreshed effective weights.
* :func:`project_gammas`: every mean-only GroupNorm's stored gamma clipped into [-gamma_max, gamma_max].
* :func:`frozen_weights`: within the block each capped layer computes its effective weight, and each mean-only
  GroupNorm its scaled gamma and beta, once (the many f-evaluations of one solve).
* :class:`CachedBound`: :func:`lmdeq.models.lipschitz_bound` of a module, recomputed only when its mode,
  parameters, buffers or effective caps changed.

The MDEQ's conv constraint per ``constraint`` (:data:`lmdeq.models.presets.CONSTRAINTS`): 'certified' caps every
conv of f (the above); 'released' runs the authors' released cap after the step instead (authors_cap.py); 'none'
touches no conv; in each case the GroupNorm gammas are then projected.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import List, Sequence

import torch
from torch import nn

from .. import checks, ops
from .capped import NormCapped
from .lipschitz import lipschitz_bound
from .normalization import MeanOnlyGroupNorm

__all__ = ["capped_layers", "composed_estimates", "update_norm_estimates", "refresh_norm_estimates", "project_gammas",
           "frozen_weights", "refresh_stale_estimates", "CachedBound"]


def capped_layers(module: nn.Module) -> List[NormCapped]:
    """Every capped layer (a cap set) in ``module``'s tree, in ``module.modules()`` order."""
    return [m for m in module.modules() if isinstance(m, NormCapped) and m.cap is not None]


@torch.no_grad()
def update_norm_estimates(layers: Sequence[NormCapped], n_iter: int) -> None:
    """Run ``n_iter`` warm-started power iterations for each capped layer of ``layers`` and store the estimates
    (one op call per kind, module docstring; per dtype and device when the layers mix them)."""
    n_iter = checks.integer("n_iter", n_iter, 1)
    capped = [c for c in layers if c.cap is not None]
    groups = {}   # one call per kind for each (dtype, device) of the layers (one group in a model)
    for c in capped:
        groups.setdefault((c.sigma.dtype, c.sigma.device), []).append(c)
    for group in groups.values():
        _update_group(group, n_iter)


def _update_group(capped: Sequence[NormCapped], n_iter: int) -> None:
    spatial = [c for c in capped if c.power_iteration == "conv"]
    matrices = [c for c in capped if c.power_iteration == "matrix"]
    if spatial:
        sigmas, vectors = ops.conv_power_iteration(
            [c.unscaled_weight().detach() for c in spatial], [c.power_vector for c in spatial],
            [c.stride for c in spatial], [c.padding for c in spatial], n_iter)
        for conv, sigma, vec in zip(spatial, sigmas, vectors):
            conv.set_estimate(sigma, vec)
    if matrices:
        sigmas, vectors = ops.power_iteration_matrices([c.estimate_matrix() for c in matrices],
                                                       [c.power_vector for c in matrices], n_iter)
        for layer, sigma, vec in zip(matrices, sigmas, vectors):
            layer.set_estimate(sigma, vec)


def composed_estimates(module: nn.Module) -> list:
    """The composed-norm estimators in ``module`` (modules with a ``refresh(n_iter)`` and ``composed_norm``)."""
    return [m for m in module.modules() if getattr(m, "composed_norm", False)]


@torch.no_grad()
def refresh_norm_estimates(module: nn.Module, n_iter: int = 30) -> None:
    """Refresh the norm estimates of every capped layer in ``module`` (one batched op call per kind), then those
    of its composed norms, with ``n_iter`` warm-started power iterations each."""
    n_iter = checks.integer("n_iter", n_iter, 1)
    layers = capped_layers(module)
    if layers:
        update_norm_estimates(layers, n_iter)
    for composed in composed_estimates(module):
        composed.refresh(n_iter)


@torch.no_grad()
def refresh_stale_estimates(module: nn.Module, n_iter: int) -> bool:
    """Re-estimate, with ``n_iter`` iterations, the capped layers (and composed norms) of ``module`` whose weights
    changed in place since their last estimate: the safety net for a missed step or a manual weight edit, where
    the change may be too large for a few warm-started iterations. (Loading a state dict restores weights and
    estimates together and counts as current.) Whether anything was refreshed."""
    stale = [c for c in capped_layers(module) if c.estimate_is_stale()]
    if stale:
        update_norm_estimates(stale, n_iter)
    composed = [c for c in composed_estimates(module) if c.estimate_is_stale()]
    for c in composed:
        c.refresh(n_iter)
    return bool(stale or composed)


@torch.no_grad()
def project_gammas(module: nn.Module) -> None:
    """Clip the stored gamma of every mean-only GroupNorm in ``module`` into [-gamma_max, gamma_max]."""
    for norm in module.modules():
        if isinstance(norm, MeanOnlyGroupNorm):
            norm.project_()


@contextmanager
def frozen_weights(module: nn.Module):
    """Within the block every capped layer uses its effective weight computed once on entry (NormCapped.frozen)
    and every mean-only GroupNorm its scaled gamma and beta computed once (MeanOnlyGroupNorm.frozen); gradients
    still reach the raw parameters through that one computation."""
    with ExitStack() as stack:
        for m in module.modules():
            if isinstance(m, (NormCapped, MeanOnlyGroupNorm)):
                stack.enter_context(m.frozen())
        yield


class CachedBound:
    """``lipschitz_bound(module)``, recomputed only when the mode or a parameter, buffer or effective cap of the
    module changed (tensor versions). ``allow_unbounded``: inf instead of an error for unbounded parts."""

    def __init__(self, module: nn.Module, allow_unbounded: bool = False):
        self.module = module
        self.allow_unbounded = allow_unbounded
        self._key, self._value = None, None

    def key(self) -> tuple:
        module = self.module
        return ((module.training,) + tuple(t._version for t in module.parameters())
                + tuple(t._version for t in module.buffers())
                + tuple(c.cap_scale for c in capped_layers(module)))

    def __call__(self) -> float:
        key = self.key()
        if self._key != key:
            self._key, self._value = key, lipschitz_bound(self.module, allow_unbounded=self.allow_unbounded)
        return self._value
