"""The original MDEQ recipe's unrolled warm-up (PRETRAIN_STEPS): f applied L times from z = 0 as an explicit
network, z_L = f(...f(f(0))), trained by backpropagation through the L applications."""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch

__all__ = ["unrolled"]


def unrolled(f: Callable, z0: List[torch.Tensor], layers: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(z_L, rel) with rel[b] = ||z_L - z_{L-1}|| / (||z_L|| + 1e-9) over the whole state of sample b (no grad)."""
    z = z0
    for _ in range(layers):
        z_prev, z = z, f(z)
    with torch.no_grad():
        diff = torch.stack([((a - b) ** 2).flatten(1).sum(1) for a, b in zip(z, z_prev)]).sum(0).sqrt()
        rel = diff / (torch.stack([(a ** 2).flatten(1).sum(1) for a in z]).sum(0).sqrt() + 1e-9)
    return z, rel
