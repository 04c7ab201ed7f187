"""The Lipschitz-MDEQ authors' conv constraint exactly as released (``constraint='released'``, baseline (b)).

What iiduka-researches/Lipschitz_mdeq (MDEQ-Vision lib/core/cls_function.py ``train``) does after every
optimiser step, for every ``nn.Conv2d`` of the whole model (stem, injection, f, head), with W the
conv's ``weight`` reshaped to a (C_out, C_in k k) matrix and u a persistent unit vector per conv:

    v <- normalize(W^T u),   u <- normalize(W v),   sigma = u^T W v          (one power-iteration step)
    if sigma > conv_cap:  weight <- weight / (sigma / conv_cap)

For a weight-normed conv (the residual blocks' two convs and the post-fusion conv of every branch of f)
``weight`` is the tensor weight norm computes from (g, v), and weight norm recomputes it from the
unchanged (g, v) at the next forward pass: the division is undone. So in effect the released cap acts on
the convs of f that are not weight-normed (the fusion paths) and on the stem and head convs, and the
weight-normed convs of f keep whatever norm the optimiser gives them. This class reproduces exactly
that, including the cost of the discarded power steps, and the released per-conv loop with one host
sync per conv (the ``if``). ||reshape(W)||_2 is not the operator norm of a k x k convolution (it can be
smaller by up to a factor k), so even where the cap acts it certifies nothing.

The persistent vectors are buffers ``released_cap_u`` of the convs (as the released
``u_for_spectral_norm``), drawn at construction from the global RNG, so checkpoints restore them.
lmdeq's own constraint, ``constraint='certified'``, caps the true operator norm inside the forward pass
instead (capped.py).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from .capped import CappedConv2d

__all__ = ["ReleasedConvCap", "BUFFER"]

BUFFER = "released_cap_u"


class ReleasedConvCap:
    """Post-step reshaped-matrix cap over every convolution of ``model``, as released."""

    def __init__(self, model: nn.Module, cap: float):
        self.cap = float(cap)
        self.convs: List[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Conv2d, CappedConv2d))]
        for conv in self.convs:
            u = torch.randn(conv.out_channels)
            conv.register_buffer(BUFFER, F.normalize(u, dim=0))

    @staticmethod
    def _stored_weight(conv: nn.Module):
        """The parameter the division lands on for good, or None where weight norm recomputes it."""
        if isinstance(conv, CappedConv2d) and conv.weight_norm:
            return None
        return conv.weight

    @torch.no_grad()
    def apply_(self) -> List[float]:
        """One released cap pass; returns the sigma of every conv (before its division)."""
        sigmas = []
        for conv in self.convs:
            stored = self._stored_weight(conv)
            w = (stored if stored is not None else conv.unscaled_weight()).detach()
            mat = w.reshape(w.shape[0], -1)
            u = getattr(conv, BUFFER)
            v = F.normalize(mat.t().mv(u), dim=0)
            u_new = F.normalize(mat.mv(v), dim=0)
            sigma = torch.dot(u_new, mat.mv(v))
            factor = torch.clamp_min(sigma / self.cap, 1.0)
            if factor > 1.0 and stored is not None:   # a weight-normed conv's division would be undone
                stored.div_(factor)
            u.copy_(u_new)
            sigmas.append(float(sigma))
        return sigmas
