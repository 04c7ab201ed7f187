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
from .cell_parts import VariationalDropout2d
from .lipschitz import BoundContext, register_lipschitz_rule

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
        # Evaluated with the scalars folded into the neighbouring affine maps, so that every elementwise
        # step is one pass: act1(gn1(y)) = relu(gn1(y) scaled by s), a_f gn2(.) = gn2(.) scaled by a_f,
        # gn3(act3(m)) = gn3(relu(m)) with gamma scaled by s. The ReLUs act in place on fresh results whose
        # producers do not keep them for their backward pass.
        s1 = self.act1.s
        u = torch.relu_(self.gn1(self.conv1(z), gamma_scale=s1, beta_scale=s1))
        return self._mix(z, self.conv2(u), injection)

    def forward_at_zero(self, z: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        """b(z) for z = 0 (``z`` must be zeros; see the module docstring), computed from its first sample;
        the result has z's batch and memory format."""
        s1 = self.act1.s
        zero = z[:1]
        u = torch.relu_(self.gn1(self.conv1(zero), gamma_scale=s1, beta_scale=s1))
        out = self._mix(zero, self.conv2(u), injection, shared=True)
        if out.shape[0] != z.shape[0]:
            out = out.expand(z.shape[0], *out.shape[1:])
        fmt = torch.channels_last if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous() \
            else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    def _mix(self, z: torch.Tensor, c: torch.Tensor, injection: torch.Tensor | None, shared: bool = False):
        """gn3(act3(a_res z + a_f v)) with v = gn2(drop(c) + injection), c = conv2 u; a_f scales gn2 (so the
        backward pass hands the incoming gradient to v unchanged). ``shared``: c is one sample shared by
        the batch (forward_at_zero)."""
        a_v = self.gn2(self.drop(c, add=injection, shared=shared), gamma_scale=self.a_f, beta_scale=self.a_f)
        mixed = a_v + z if self.a_res == 1.0 else torch.add(a_v, z, alpha=self.a_res)
        return self.gn3(torch.relu_(mixed), gamma_scale=self.act3.s)

    def lipschitz(self):
        """g3 s (a_res + a_f g2 d c2 s g1 c1); see the module docstring (inf when a layer is unbounded)."""
        return _residual_block(self, BoundContext(self))


@register_lipschitz_rule(ResidualBlock)
def _residual_block(m: ResidualBlock, bound):
    """g3 s (a_res + a_f g2 d c2 s g1 c1): a convex residual (1 - alpha) z + alpha v(z) (v the chain conv1, gn1,
    act1, conv2, drop, gn2 with the injection added: a term that does not depend on z) followed by act3, gn3."""
    inner = (bound(m.gn2) * bound(m.drop) * bound(m.conv2) * bound(m.act1) * bound(m.gn1) * bound(m.conv1))
    return bound(m.gn3) * bound(m.act3) * (m.a_res + m.a_f * inner)
