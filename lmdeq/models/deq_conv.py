"""The convolution used inside the MDEQ cell f, with optional weight norm and an operator-norm cap.

    W     = g * V / ||V||_row      (weight norm, one g per output channel)   or   W = V
    W_eff = W / max(1, (1 + margin) sigma_hat / cap)                         (when a cap is set)
    y     = conv2d(x, W_eff, stride, padding = k // 2)                       (no bias)

sigma_hat estimates ||A_W||_2, the l2 operator norm of the linear map x -> conv2d(x, W) on this layer's
actual input size (C_in, H, W), by warm-started power iteration on the convolution itself
(``lmdeq.ops.conv_power_iteration``; for a 1x1 convolution ||A_W||_2 = ||W||_2 for every input size,
so ``lmdeq.ops.power_iteration_matrices`` is used). The persistent vector and sigma_hat are buffers,
refreshed by :func:`lmdeq.models.constraints.update_norm_estimates`.

Certificate: power iteration returns a lower estimate, so the layer assumes
||A_W||_2 <= (1 + margin) sigma_hat (checked against dense Jacobians in the tests). Under that
assumption ||A_{W_eff}||_2 <= min(cap, (1 + margin) sigma_hat) = :meth:`DEQConv2d.lipschitz`.
The cap acts on the weight the forward pass uses, after weight norm, so neither weight norm nor an
optimiser step can undo it (the scale is recomputed from the stored estimate at every call).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from ..deq import adjoint_done, is_solved_state
from .cell_parts import gradient_needed

__all__ = ["DEQConv2d"]


class _StateConv2d(torch.autograd.Function):
    """conv2d(x, w) (bias-free, square stride and padding) whose backward pass computes dL/dx only while
    it is needed: not once x is a solved DEQ state whose adjoint solve is done (:func:`lmdeq.deq.
    adjoint_done`), nor when the pass does not ask for it; dL/dw only when needed. Forward-mode
    derivative for torch.func."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, stride, padding):
        return F.conv2d(x, w, stride=stride, padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, stride, padding = inputs
        ctx.save_for_backward(x, w)
        ctx.save_for_forward(x, w)
        ctx.state = x   # the object itself, whose adjoint flag the backward pass reads
        ctx.stride, ctx.padding = stride, padding

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x = gradient_needed(ctx, 0) and not adjoint_done(ctx.state)
        need_w = gradient_needed(ctx, 1)
        if not (need_x or need_w):
            return None, None, None, None
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad, x, w, None, [ctx.stride] * 2, [ctx.padding] * 2, [1, 1], False, [0, 0], 1,
            [need_x, need_w, False])
        return gx, gw, None, None

    @staticmethod
    def jvp(ctx, dx, dw, _stride, _padding):
        x, w = ctx.saved_tensors
        out = None if dx is None else F.conv2d(dx, w, stride=ctx.stride, padding=ctx.padding)
        if dw is not None:
            term = F.conv2d(x, dw, stride=ctx.stride, padding=ctx.padding)
            out = term if out is None else out + term
        return out


class DEQConv2d(nn.Module):
    """Bias-free k x k convolution (padding k // 2) with optional weight norm and norm cap."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 input_size=None, weight_norm: bool = False, cap: float | None = None,
                 margin: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, kernel_size // 2
        self.cap = None if cap is None else float(cap)
        self.margin = float(margin)
        v = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        if weight_norm:
            # As in the original MDEQ: weight-normed convolutions keep torch's default init, g = ||v||.
            nn.init.kaiming_uniform_(v, a=math.sqrt(5))
            self.weight_v = nn.Parameter(v)
            self.weight_g = nn.Parameter(v.reshape(out_channels, -1).norm(dim=1).reshape(-1, 1, 1, 1))
        else:
            nn.init.normal_(v, 0.0, 0.01)
            self.weight = nn.Parameter(v)
        self.weight_norm = weight_norm
        if self.cap is not None:
            if kernel_size == 1:
                vec = torch.randn(out_channels)
            else:
                if input_size is None:
                    raise ValueError("input_size (H, W) is needed to estimate a k x k convolution's norm")
                vec = torch.randn(1, in_channels, *input_size)
            self.register_buffer("sigma", torch.zeros(()))
            self.register_buffer("power_vector", vec / vec.norm())
        self._estimated_at = None
        self._frozen_weight = None
        self._frozen_scaled = None

    # -- weights ---------------------------------------------------------------------------------------
    def unscaled_weight(self) -> torch.Tensor:
        """W: the weight after weight norm, before the cap."""
        if not self.weight_norm:
            return self.weight
        v = self.weight_v
        return v * (self.weight_g / v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, 1, 1, 1))

    def scale(self) -> torch.Tensor | float:
        """1 / max(1, (1 + margin) sigma_hat / cap) (1.0 without a cap); not differentiated."""
        if self.cap is None:
            return 1.0
        return 1.0 / torch.clamp_min(self.sigma * ((1.0 + self.margin) / self.cap), 1.0)

    def effective_weight(self) -> torch.Tensor:
        """W_eff, the weight the forward pass uses (computed once per solve inside :meth:`frozen`)."""
        if self._frozen_weight is not None:
            return self._frozen_weight
        w = self.unscaled_weight()
        return w if self.cap is None else w * self.scale()

    @contextmanager
    def frozen(self):
        """Compute W_eff once and reuse it for every call inside the block (the many f-evaluations of one
        solve), as well as each input-scaled weight scale * W_eff (:meth:`forward`), computed on first use
        in the grad mode of the block's entry; outside, W_eff is recomputed from the current weights and
        estimate at every call. Nested blocks compute their own W_eff and restore the outer one on exit."""
        outer, outer_scaled = self._frozen_weight, self._frozen_scaled
        self._frozen_weight = None
        self._frozen_weight = self.effective_weight()
        self._frozen_scaled = ({}, torch.is_grad_enabled())
        try:
            yield
        finally:
            self._frozen_weight, self._frozen_scaled = outer, outer_scaled

    def _scaled_weight(self, scale: float) -> torch.Tensor:
        w = self.effective_weight()
        if scale == 1.0:
            return w
        if self._frozen_scaled is None:
            return w * scale
        cache, grad = self._frozen_scaled
        if scale not in cache:
            with torch.set_grad_enabled(grad):
                cache[scale] = w * scale
        return cache[scale]

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """conv2d(scale * x, W_eff) = conv2d(x, scale * W_eff): a scalar on the input (the activation's s)
        costs a pass over the small weight instead of one over the activations. On the DEQ's solved state
        z* (lmdeq.deq.is_solved_state; outside autocast) the backward pass skips dL/dx once the adjoint
        solve is done (:class:`_StateConv2d`)."""
        w = self._scaled_weight(scale)
        if is_solved_state(x) and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return _StateConv2d.apply(x, w, self.stride, self.padding)
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)

    # -- norm estimate ---------------------------------------------------------------------------------
    def lipschitz(self) -> torch.Tensor | float:
        """min(cap, (1 + margin) sigma_hat): the bound on ||A_{W_eff}||_2 (inf without a cap). It refers to
        the weights of the last estimate; :meth:`estimate_is_stale` says whether they changed since."""
        if self.cap is None:
            return float("inf")
        if self._estimated_at is None:
            raise RuntimeError("no norm estimate yet: run lmdeq.models.constraints.update_norm_estimates")
        return torch.clamp_max(self.sigma * (1.0 + self.margin), self.cap)

    def _param_versions(self):
        return tuple(p._version for p in self.parameters(recurse=False))

    def estimate_is_stale(self) -> bool:
        """True when a parameter changed in place since sigma_hat was last refreshed."""
        return self.cap is not None and self._estimated_at != self._param_versions()

    @torch.no_grad()
    def set_estimate(self, sigma: torch.Tensor, vector: torch.Tensor) -> None:
        """Store a fresh estimate sigma_hat and its power-iteration vector."""
        self.sigma.copy_(sigma)
        self.power_vector.copy_(vector.reshape(self.power_vector.shape))
        self._estimated_at = self._param_versions()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint stores weights with their estimate: loading both makes the estimate current, so
        the rebuilt layer computes exactly the saved function."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.cap is not None and prefix + "sigma" in state_dict:
            self._estimated_at = self._param_versions()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, weight_norm={self.weight_norm}, cap={self.cap}, margin={self.margin}")
