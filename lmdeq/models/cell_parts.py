"""The small parts the layers of the MDEQ cell f share: its activation, its dropout and the gradient-need query of
its custom autograd Functions.

* :class:`ScaledReLU`, the activation of the cell: act(x) = s * max(x, 0). It is s-Lipschitz in any l_p norm
  (elementwise, slope 0 or s). The original MDEQ uses s = 1. Inside the cell, s * relu(x) is evaluated as
  relu(x) with s folded into the neighbouring affine map (a GroupNorm's gamma/beta or the next convolution's
  weight), which saves a pass over the activations; the class holds s and the bound.
* The other scaled activations, act(x) = s * phi(x) elementwise with phi 1-Lipschitz on R (|phi(a) - phi(b)| <=
  |a - b|, so ||act(x) - act(y)||_2 <= s ||x - y||_2 summed over the entries): :class:`ScaledTanh` (tanh' in
  (0, 1]), :class:`ScaledLeakyReLU` (slopes 1 and negative_slope, |negative_slope| <= 1), :class:`ScaledAbs`
  (slopes +-1). :class:`ScaledActivation` is their base: ``lipschitz()`` is s.
* :class:`VariationalDropout2d`, variational (per-channel) dropout with one mask per forward pass, as in MDEQ.
  The mask m has shape (B, C, 1, 1), entries 0 or 1/(1-p), drawn by :meth:`~VariationalDropout2d.reset_mask`
  once per forward pass and reused by every application of f during the solve, so f stays a fixed map. In
  training mode the layer is 1/(1-p)-Lipschitz (a diagonal scaling with entries <= 1/(1-p)); in eval mode it
  is the identity.
* :func:`gradient_needed` says whether a custom Function's backward (the cell's convolution, capped.py, and
  mean-only GroupNorm, normalization.py) must compute the gradient of one of its inputs: the input must require
  grad and, where the engine can tell, the gradient's consumer must run in this pass (``torch.autograd.grad``
  with respect to other tensors skips it, so a vector-Jacobian product with respect to the DEQ state skips the
  parameter terms). :func:`lmdeq.deq.adjoint_done` adds the solved state z* once its adjoint solve has
  finished: the rest of the pass discards any gradient with respect to it.

Nothing here imports the rest of lmdeq.models (the layers of f import it).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import checks

__all__ = ["ScaledActivation", "ScaledReLU", "ScaledTanh", "ScaledLeakyReLU", "ScaledAbs", "VariationalDropout2d",
           "gradient_needed"]


class ScaledActivation(nn.Module):
    """act(x) = s * phi(x) for an elementwise 1-Lipschitz phi (subclasses define ``phi``); Lipschitz constant s."""

    def __init__(self, s: float = 1.0):
        super().__init__()
        self.s = checks.number("s", s, 0, low_open=True, where=f"{type(self).__name__}: ")

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.phi(x)
        return out if self.s == 1.0 else out * self.s

    def lipschitz(self) -> float:
        return self.s

    def extra_repr(self) -> str:
        return f"s={self.s}"


class ScaledReLU(ScaledActivation):
    """act(x) = s * relu(x); Lipschitz constant s."""

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class ScaledTanh(ScaledActivation):
    """act(x) = s * tanh(x); Lipschitz constant s (tanh' = 1 - tanh^2 in (0, 1])."""

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class ScaledAbs(ScaledActivation):
    """act(x) = s * |x|; Lipschitz constant s (| |a| - |b| | <= |a - b|)."""

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class ScaledLeakyReLU(ScaledActivation):
    """act(x) = s * leaky_relu(x, negative_slope) with |negative_slope| <= 1; Lipschitz constant s."""

    def __init__(self, s: float = 1.0, negative_slope: float = 0.01):
        super().__init__(s)
        self.negative_slope = checks.number("negative_slope", negative_slope, -1, 1, where="ScaledLeakyReLU: ")

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"s={self.s}, negative_slope={self.negative_slope}"


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


def gradient_needed(ctx, index: int) -> bool:
    """Whether the running backward pass needs the gradient of input ``index`` of a custom Function (see
    the module docstring; uses torch._C._will_engine_execute_node where available, else assumes yes)."""
    if not ctx.needs_input_grad[index]:
        return False
    try:
        node = ctx.next_functions[index][0]
        return node is not None and torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError, IndexError):   # e.g. under torch.func transforms: assume needed
        return True
