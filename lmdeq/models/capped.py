"""Linear layers whose true l2 operator norm is capped inside the forward pass: :class:`CappedConv2d` and
:class:`CappedLinear`, the certified building blocks of a contractive f (the MDEQ cell's convolutions are
CappedConv2d).

    W     = g * V / ||V||_row      (weight norm, one g per output unit)   or   W = V
    W_eff = W / max(1, (1 + margin) sigma_hat / cap)                      (when a cap is set)
    y     = conv2d(x, W_eff, stride, padding = k // 2)    or    y = x W_eff^T + b

sigma_hat estimates ||A_W||_2, the l2 operator norm of the linear map A_W: x -> conv2d(x, W) on the layer's
actual input size (C_in, H, W) (or x -> W x), by warm-started power iteration on the map itself: a k x k
convolution through ``lmdeq.ops.conv_power_iteration`` (power iteration on A^T A, A^T the matching
conv_transpose2d); a 1x1 convolution and a linear layer through ``lmdeq.ops.power_iteration_matrices``
(for a 1x1 convolution ||A_W||_2 = ||W||_2 at every input size: per pixel it is the matrix W). The persistent
vector and sigma_hat are buffers (``power_vector``, ``sigma``), refreshed for every capped layer of a module
tree in one batched op call per kind by :func:`lmdeq.models.refresh_norm_estimates`.

Certificate. Power iteration returns a lower estimate, so the layer *assumes*
||A_W||_2 <= (1 + margin) sigma_hat (checked against dense Jacobians in the tests; the one assumption every
certified bound of lmdeq.models rests on). Under it

    ||A_{W_eff}||_2 = ||A_W||_2 / max(1, (1 + margin) sigma_hat / cap) <= min(cap, (1 + margin) sigma_hat),

which :meth:`lipschitz` returns; a bias does not change a Lipschitz constant. The cap acts on the weight the
forward pass uses, after weight norm, so neither weight norm nor an optimiser step can undo it (the scale is
recomputed from the stored estimate at every call, or once per solve inside :meth:`frozen`).

``cap_scale`` (a python float, 1.0 unless an iteration budget lowers it; :mod:`lmdeq.models.budget`) multiplies
the cap: the effective cap is ``cap * cap_scale``. It is derived from the stored estimates, so it is not saved.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from ..deq import adjoint_done, is_solved_state
from .cell_parts import gradient_needed

__all__ = ["CappedConv2d", "CappedLinear", "NormCapped"]


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


class NormCapped(nn.Module):
    """What a capped linear layer shares (module docstring): the weight (optionally weight-normed), the cap and
    margin, the estimate buffers and the effective weight. Subclasses create the weight and the vector and say
    which power iteration estimates their norm (``power_iteration``: 'conv' or 'matrix')."""

    power_iteration = "matrix"

    def _init_cap(self, cap, margin, vector: torch.Tensor | None) -> None:
        self.cap = None if cap is None else float(cap)
        if self.cap is not None and not (math.isfinite(self.cap) and self.cap > 0):
            raise ValueError(f"{type(self).__name__}: cap must be a finite number > 0 (or None), got {cap!r}")
        self.margin = float(margin)
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"{type(self).__name__}: margin must be a finite number >= 0, got {margin!r}")
        self.cap_scale = 1.0
        if self.cap is not None:
            self.register_buffer("sigma", torch.zeros(()))
            self.register_buffer("power_vector", vector / vector.norm())
        self._estimated_at = None
        self._frozen_weight = None
        self._frozen_scaled = None

    def _init_weight(self, v: torch.Tensor, weight_norm: bool) -> None:
        """Register ``v`` as the weight, or as weight norm's direction with g = ||v|| per output unit."""
        if weight_norm:
            self.weight_v = nn.Parameter(v)
            self.weight_g = nn.Parameter(v.reshape(v.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1)))
        else:
            self.weight = nn.Parameter(v)
        self.weight_norm = weight_norm

    # -- weights ---------------------------------------------------------------------------------------
    def unscaled_weight(self) -> torch.Tensor:
        """W: the weight after weight norm, before the cap."""
        if not self.weight_norm:
            return self.weight
        v = self.weight_v
        return v * (self.weight_g / v.reshape(v.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1)))

    def effective_cap(self) -> float | None:
        """cap * cap_scale (None without a cap)."""
        if self.cap is None:
            return None
        return self.cap if self.cap_scale == 1.0 else self.cap * self.cap_scale

    def scale(self) -> torch.Tensor | float:
        """1 / max(1, (1 + margin) sigma_hat / cap) (1.0 without a cap); not differentiated."""
        if self.cap is None:
            return 1.0
        return 1.0 / torch.clamp_min(self.sigma * ((1.0 + self.margin) / self.effective_cap()), 1.0)

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

    def estimate_matrix(self) -> torch.Tensor:
        """The matrix whose norm ``power_iteration='matrix'`` estimates: W reshaped to (out, -1)."""
        w = self.unscaled_weight().detach()
        return w.reshape(w.shape[0], -1)

    # -- norm estimate ---------------------------------------------------------------------------------
    def lipschitz(self) -> torch.Tensor | float:
        """min(cap * cap_scale, (1 + margin) sigma_hat): the bound on ||A_{W_eff}||_2 (inf without a cap). It
        refers to the weights of the last estimate; :meth:`estimate_is_stale` says whether they changed since."""
        if self.cap is None:
            return float("inf")
        if self._estimated_at is None:
            raise RuntimeError("no norm estimate yet: run lmdeq.models.refresh_norm_estimates")
        return torch.clamp_max(self.sigma * (1.0 + self.margin), self.effective_cap())

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

    def _cap_repr(self) -> str:
        scaled = "" if self.cap_scale == 1.0 else f", cap_scale={self.cap_scale:.6g}"
        return f"weight_norm={self.weight_norm}, cap={self.cap}, margin={self.margin}{scaled}"


class CappedConv2d(NormCapped):
    """Bias-free k x k convolution (padding k // 2) with optional weight norm and an operator-norm cap (module
    docstring). ``input_size`` (H, W): the input size the norm is estimated on (needed for k > 1 with a cap: the
    operator norm of a zero-padded convolution depends on it). Lipschitz bound: :meth:`lipschitz`.

    Initialisation: weight-normed, torch's default (kaiming uniform, a = sqrt 5) with g = ||v|| (as the original
    MDEQ); otherwise N(0, 0.01)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 input_size=None, weight_norm: bool = False, cap: float | None = None,
                 margin: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, kernel_size // 2
        v = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        if weight_norm:
            # As in the original MDEQ: weight-normed convolutions keep torch's default init, g = ||v||.
            nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        else:
            nn.init.normal_(v, 0.0, 0.01)
        self._init_weight(v, weight_norm)
        vec = None
        if cap is not None:
            if kernel_size == 1:
                vec = torch.randn(out_channels)
            else:
                if input_size is None:
                    raise ValueError("input_size (H, W) is needed to estimate a k x k convolution's norm")
                vec = torch.randn(1, in_channels, *input_size)
        self.power_iteration = "matrix" if kernel_size == 1 else "conv"
        self._init_cap(cap, margin, vec)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """conv2d(scale * x, W_eff) = conv2d(x, scale * W_eff): a scalar on the input (the activation's s)
        costs a pass over the small weight instead of one over the activations. On the DEQ's solved state
        z* (lmdeq.deq.is_solved_state; outside autocast) the backward pass skips dL/dx once the adjoint
        solve is done (:class:`_StateConv2d`)."""
        w = self._scaled_weight(scale)
        if is_solved_state(x) and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return _StateConv2d.apply(x, w, self.stride, self.padding)
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The layer as a linear map (it is one): conv2d(x, W_eff)."""
        return F.conv2d(x, self.effective_weight(), stride=self.stride, padding=self.padding)

    def input_shape(self):
        """(1, C_in, H, W) of the input the norm is estimated on (None for an uncapped k x k convolution)."""
        if self.cap is None or self.kernel_size == 1:
            return None
        return tuple(self.power_vector.shape)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, {self._cap_repr()}")


class CappedLinear(NormCapped):
    """y = x W_eff^T + b with an operator-norm cap on W_eff (module docstring): ||W_eff||_2 <= min(cap,
    (1 + margin) sigma_hat), estimated by matrix power iteration (``lmdeq.ops.power_iteration_matrices``).
    Initialisation as ``nn.Linear`` (kaiming uniform, a = sqrt 5; bias uniform in +-1/sqrt(in_features))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_norm: bool = False,
                 cap: float | None = None, margin: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self._init_weight(v, weight_norm)
        if bias:
            bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self._init_cap(cap, margin, None if cap is None else torch.randn(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part x W_eff^T (without the bias)."""
        return F.linear(x, self.effective_weight())

    def input_shape(self):
        return (1, self.in_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, {self._cap_repr()}"
