"""The per-branch residual block of the MDEQ cell (MDEQ's BasicBlock), with its Lipschitz bound.

    u    = act(gn1(conv1 z))                  conv1: C -> eC, 3x3
    v    = gn2(drop(conv2 u) + injection)     conv2: eC -> C, 3x3; drop: variational dropout
    b(z) = gn3(act(a_res z + a_f v))          (a_res, a_f) = (1, 1) original, (1 - alpha, alpha) Lipschitz

The injection does not depend on z, so in l2 (per sample)

    Lip(b) <= g3 * s * (a_res + a_f * g2 * d * c2 * s * g1 * c1)

with c = conv norm bounds, g = GroupNorm bounds (max |gamma|), s = activation slope, d = dropout
scaling (1/(1-p) in training mode, 1 in eval mode).

At the zero state (the MDEQ's initial iterate) conv1 z = 0, so u and conv2 u are the same for every
sample: :meth:`ResidualBlock.forward_at_zero` computes them on one sample and broadcasts at the first
per-sample term (the injection or the dropout mask), the same function at a 1/B of the convolutions'
cost.
"""
from __future__ import annotations

import torch
from torch import nn

from .cell_options import CellOptions
from .dropout import VariationalDropout2d

__all__ = ["ResidualBlock"]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, resolution: int, options: CellOptions):
        super().__init__()
        inner = options.expansion * channels
        size = (resolution, resolution)
        self.conv1 = options.conv(channels, inner, 3, input_size=size, weight_norm=options.weight_norm)
        self.gn1 = options.norm(options.num_groups, inner)
        self.act1 = options.act()
        self.conv2 = options.conv(inner, channels, 3, input_size=size, weight_norm=options.weight_norm)
        self.drop = VariationalDropout2d(options.dropout)
        self.gn2 = options.norm(options.num_groups, channels)
        self.act3 = options.act()
        self.gn3 = options.norm(options.num_groups, channels)
        self.a_res, self.a_f = options.residual_coefficients()

    def forward(self, z: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        # Evaluated with the activations' slope s folded into the neighbouring affine maps, so that every
        # elementwise step is one pass: act1(gn1(y)) = relu(gn1(y) scaled by s), gn3(act3(m)) =
        # gn3(relu(m)) with gamma scaled by s, and (1 - a_f) z + a_f v = lerp(z, v, a_f). The ReLUs act in
        # place on fresh results whose producers do not keep them for their backward pass.
        s1, s3 = self.act1.s, self.act3.s
        u = torch.relu_(self.gn1(self.conv1(z), gamma_scale=s1, beta_scale=s1))
        v = self.drop(self.conv2(u), add=injection)
        v = self.gn2(v)
        mixed = z + v if (self.a_res, self.a_f) == (1.0, 1.0) else torch.lerp(z, v, self.a_f)  # a_res = 1 - a_f
        return self.gn3(torch.relu_(mixed), gamma_scale=s3)

    def forward_at_zero(self, z: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        """b(z) for z = 0 (``z`` must be zeros; see the module docstring), computed from its first sample;
        the result has z's batch and memory format."""
        s1, s3 = self.act1.s, self.act3.s
        zero = z[:1]
        u = torch.relu_(self.gn1(self.conv1(zero), gamma_scale=s1, beta_scale=s1))
        v = self.drop(self.conv2(u), add=injection, shared=True)
        v = self.gn2(v)
        mixed = zero + v if (self.a_res, self.a_f) == (1.0, 1.0) else torch.lerp(zero, v, self.a_f)
        out = self.gn3(torch.relu_(mixed), gamma_scale=s3)
        if out.shape[0] != z.shape[0]:
            out = out.expand(z.shape[0], *out.shape[1:])
        fmt = torch.channels_last if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous() \
            else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    def lipschitz(self):
        """g3 s (a_res + a_f g2 d c2 s g1 c1); see the module docstring."""
        inner = (self.gn2.lipschitz() * self.drop.lipschitz() * self.conv2.lipschitz() * self.act1.lipschitz()
                 * self.gn1.lipschitz() * self.conv1.lipschitz())
        return self.gn3.lipschitz() * self.act3.lipschitz() * (self.a_res + self.a_f * inner)
