"""Variational (per-channel) dropout with one mask per forward pass, as in MDEQ.

The mask m has shape (B, C, 1, 1), entries 0 or 1/(1-p), drawn by :meth:`reset_mask` once per forward
pass and reused by every application of f during the solve, so f stays a fixed map. In training mode
the layer is 1/(1-p)-Lipschitz (a diagonal scaling with entries <= 1/(1-p)); in eval mode it is the
identity.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import checks

__all__ = ["VariationalDropout2d"]


class VariationalDropout2d(nn.Module):
    """x -> m * x with a per-(sample, channel) mask fixed between :meth:`reset_mask` calls."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = checks.number("dropout", p, 0, 1, high_open=True)
        self.mask = None

    def active(self) -> bool:
        return self.training and self.p > 0.0

    def reset_mask(self, batch: int, channels: int, device, dtype) -> None:
        """Draw a new mask for the next forward pass (no-op when inactive)."""
        if not self.active():
            self.mask = None
            return
        keep = torch.empty(batch, channels, 1, 1, device=device, dtype=dtype).bernoulli_(1.0 - self.p)
        self.mask = keep / (1.0 - self.p)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None, shared: bool = False) -> torch.Tensor:
        """m * x, or m * x + add in one pass when ``add`` is given. ``shared=True``: x is one sample (batch
        1) that every sample of the mask's batch shares; the result broadcasts to that batch."""
        if not self.active():
            return x if add is None else x + add
        batch_ok = x.shape[0] == 1 if shared else self.mask is not None and self.mask.shape[0] == x.shape[0]
        if self.mask is None or self.mask.shape[1] != x.shape[1] or not batch_ok:
            raise RuntimeError("VariationalDropout2d: call reset_mask(batch, channels, ...) for this "
                               "batch before applying the layer")
        return x * self.mask if add is None else torch.addcmul(add, x, self.mask)

    def lipschitz(self) -> float:
        return 1.0 / (1.0 - self.p) if self.active() else 1.0

    def extra_repr(self) -> str:
        return f"p={self.p}"
