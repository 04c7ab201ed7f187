"""Scaled ReLU, the activation of the MDEQ cell: act(x) = s * max(x, 0).

It is s-Lipschitz in any l_p norm (elementwise, slope 0 or s). The original MDEQ uses s = 1. Inside the
cell, s * relu(x) is evaluated as relu(x) with s folded into the neighbouring affine map (a GroupNorm's
gamma/beta or the next convolution's weight), which saves a pass over the activations; this module
holds s and the bound.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ScaledReLU"]


class ScaledReLU(nn.Module):
    """act(x) = s * relu(x); Lipschitz constant s."""

    def __init__(self, s: float = 1.0):
        super().__init__()
        self.s = float(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(x)
        return out if self.s == 1.0 else out * self.s

    def lipschitz(self) -> float:
        return self.s

    def extra_repr(self) -> str:
        return f"s={self.s}"
