"""Batched power-iteration refresh of the operator-norm estimates of :class:`DEQConv2d` layers.

All capped k x k convolutions go through one ``lmdeq.ops.conv_power_iteration`` call (power iteration
on A^T A, where A x = conv2d(x, W) on the layer's input size and A^T is the matching
conv_transpose2d), and all 1x1 convolutions through one ``lmdeq.ops.power_iteration_matrices`` call,
so a fused kernel can treat every layer at once. Vectors are persistent (warm start), so a few
iterations per training step track the slowly moving weights.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import checks, ops
from .deq_conv import DEQConv2d

__all__ = ["update_norm_estimates"]


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
