"""The Lipschitz-MDEQ authors' released constraint, kept for comparison (``constraint='authors'``).

After every optimiser step the authors cap the spectral norm of each convolution's kernel *reshaped to a
matrix* (C_out, C_in k k): with sigma = ||reshape(W)||_2 (power iteration, persistent vectors),

    W <- W * min(1, conv_cap / sigma).

Here the factor is applied to the stored parameter that sets the weight's scale (``weight_g`` under weight
norm, else ``weight``), so the capped matrix is the one the forward pass uses. This is *not* a
certificate: ||reshape(W)||_2 under-estimates the operator norm of a k x k convolution (up to a factor k),
so a model under this constraint reports ``lipschitz_bound() = inf``. lmdeq's default,
``constraint='certified'``, caps the true operator norm inside the forward pass instead (deq_conv.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import ops
from .deq_conv import DEQConv2d

__all__ = ["ReshapedMatrixCap"]


class ReshapedMatrixCap:
    """Post-step reshaped-matrix norm cap over a list of convolutions (one batched power iteration)."""

    def __init__(self, convs: Sequence[DEQConv2d], cap: float, n_iter: int):
        self.convs = list(convs)
        self.cap = float(cap)
        self.n_iter = n_iter
        self.us = [torch.nn.functional.normalize(torch.randn(c.out_channels), dim=0) for c in self.convs]

    @torch.no_grad()
    def apply_(self) -> torch.Tensor:
        """Cap every conv; returns the reshaped-matrix norms measured before capping."""
        weights = [c.unscaled_weight().detach().reshape(c.out_channels, -1) for c in self.convs]
        self.us = [u.to(w.device, w.dtype) for u, w in zip(self.us, weights)]
        sigmas, self.us = ops.power_iteration_matrices(weights, self.us, self.n_iter)
        factors = torch.clamp_max(self.cap / sigmas.clamp_min(1e-12), 1.0)
        for conv, factor in zip(self.convs, factors):
            param = conv.weight_g if conv.weight_norm else conv.weight
            param.mul_(factor.to(param.dtype))
        return sigmas
