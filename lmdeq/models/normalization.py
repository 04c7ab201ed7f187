"""Group normalisations of the MDEQ cell.

* :class:`StandardGroupNorm` (original MDEQ): y = gamma (x - mean_g x) / sqrt(var_g x + eps) + beta.
  Dividing by the group's standard deviation makes it scale invariant, hence not globally Lipschitz
  (its gain grows like 1/sqrt(eps) near constant inputs): its bound is inf.
* :class:`MeanOnlyGroupNorm` (Lipschitz MDEQ): y = gamma_eff (x - mean_g x) + beta with
  gamma_eff = clamp(gamma, -gamma_max, gamma_max). Per sample, x -> x - mean_g x is an orthogonal
  projection (norm 1), and the per-channel scale has norm max |gamma_eff| <= gamma_max, so the layer is
  max|gamma_eff|-Lipschitz in l2 (1 without affine). The clip sits in the forward pass, so no optimiser
  step can undo it.

  Gradient: d gamma_eff / d gamma is taken as 1 (a straight-through clip). A plain clamp has gradient 0
  on the boundary, and gamma starts there (gamma = gamma_max = 1), so it would never learn.
  :meth:`MeanOnlyGroupNorm.project_` (called after every optimiser step by ``constraint_step``) clips
  the stored parameter into the box, so the forward clip is an identity whenever the model is used as
  trained and the straight-through gradient is the true gradient: training is projected gradient
  descent on gamma, as in the authors' code (clamp after the step), while the bound holds at every
  forward pass, also between a step and its projection.

  Backward pass (:class:`_MeanOnlyGroupNormFn`, written out instead of autograd's chain of the
  mean, the broadcast and the affine map). With G = dL/dy, S_bc = sum_hw G_bchw, and N = |group| HW,

      dL/dx_bchw = gamma_c G_bchw - (1/N) sum_{c' in g(c)} gamma_c' S_bc'     (one pass over G)
      dL/dgamma_c = sum_b (sum_hw G_bchw x_bchw - m_b,g(c) S_bc),   dL/dbeta_c = sum_b S_bc,

  and each is computed only when the backward pass needs it (a vector-Jacobian product with respect to
  the state skips the parameter terms).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from .cell_parts import gradient_needed

__all__ = ["MeanOnlyGroupNorm", "StandardGroupNorm", "group_norm"]


class _ClipStraightThrough(torch.autograd.Function):
    """clamp(x, -bound, bound) in the forward pass, the identity's derivative in both autodiff modes
    (usable under torch.func transforms)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, bound: float) -> torch.Tensor:
        return x.clamp(-bound, bound)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, bound_tangent):
        return x_tangent


def clip_straight_through(x: torch.Tensor, bound: float) -> torch.Tensor:
    """clamp(x, -bound, bound) whose gradient w.r.t. x is 1 everywhere (see the module docstring)."""
    return _ClipStraightThrough.apply(x, bound)


def _group_means(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per sample, the means of x over (group, spatial), shape (B, num_groups, 1). Computed from
    per-channel means (groups are equal-sized): a reduction that reads x in any memory format."""
    b, c = x.shape[:2]
    return x.mean(dim=tuple(range(2, x.dim()))).reshape(b, num_groups, c // num_groups).mean(dim=-1, keepdim=True)


def _per_channel(m: torch.Tensor, shape) -> torch.Tensor:
    """(B, G, 1) group values broadcast to their channels, shaped ``shape`` = (B, C, 1, ...)."""
    b, g = m.shape[:2]
    return m.expand(b, g, shape[1] // g).reshape(shape)


def _mean_only_group_norm(x, gamma, beta, num_groups: int, scale: float) -> torch.Tensor:
    """gamma (x - m) + beta with (C,) gamma and beta, or scale (x - m) without them (m: the group means),
    in as few operator calls as the math allows: the per-(sample, channel) offset beta - gamma m is one
    addcmul on the (B, G, C/G) means, the output one addcmul over x."""
    b, c = x.shape[:2]
    g = num_groups
    out_shape = (b, c) + (1,) * (x.dim() - 2)
    means = _group_means(x, g)
    if gamma is None:
        out = x - _per_channel(means, out_shape)
        return out if scale == 1.0 else out.mul_(scale) if not out.requires_grad else out * scale
    offset = torch.addcmul(beta.reshape(1, g, c // g), gamma.reshape(1, g, c // g), means, value=-1.0)
    return torch.addcmul(offset.reshape(out_shape), x, gamma.reshape((1, c) + out_shape[2:]))


class _MeanOnlyGroupNormFn(torch.autograd.Function):
    """:func:`_mean_only_group_norm` with the backward pass of the module docstring (and its forward-mode
    derivative, for torch.func.jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, gamma, beta, num_groups, scale):
        return _mean_only_group_norm(x, gamma, beta, num_groups, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, gamma, beta, num_groups, scale = inputs
        ctx.num_groups, ctx.scale, ctx.affine = num_groups, scale, gamma is not None
        ctx.x_shape, ctx.x_dtype = tuple(x.shape), x.dtype
        kept = (x, gamma) if gamma is not None else (None, None)   # x only for the gradient of gamma
        ctx.save_for_backward(*kept)
        ctx.save_for_forward(*kept)

    @staticmethod
    def backward(ctx, grad):
        x, gamma = ctx.saved_tensors
        g = ctx.num_groups
        b, c = ctx.x_shape[:2]
        spatial_dims = tuple(range(2, len(ctx.x_shape)))
        spatial = (1,) * len(spatial_dims)
        shape = (1, c) + spatial
        per_group = (c // g) * math.prod(ctx.x_shape[2:])
        need_x = gradient_needed(ctx, 0)
        need_gamma = ctx.affine and gradient_needed(ctx, 1)
        need_beta = ctx.affine and gradient_needed(ctx, 2)
        if not (need_x or need_gamma or need_beta):
            return None, None, None, None, None
        sums = grad.sum(dim=spatial_dims)                                          # S_bc
        gx = ggamma = gbeta = None
        if need_x:
            weighted = sums * gamma.reshape(1, c) if ctx.affine else sums * ctx.scale
            corr = weighted.reshape(b, g, c // g).sum(dim=-1, keepdim=True) / per_group
            corr = corr.expand(b, g, c // g).reshape((b, c) + spatial)
            if ctx.affine:
                gx = torch.addcmul(-corr, grad, gamma.reshape(shape))
            else:
                gx = grad - corr if ctx.scale == 1.0 else torch.add(-corr, grad, alpha=ctx.scale)
            gx = gx.to(ctx.x_dtype)
        if need_gamma:
            mean = _per_channel(_group_means(x, g), (b, c))
            ggamma = ((grad * x).sum(dim=(0,) + spatial_dims) - (mean * sums).sum(dim=0)).to(gamma.dtype)
        if need_beta:
            gbeta = sums.sum(dim=0).to(gamma.dtype)
        return gx, ggamma, gbeta, None, None

    @staticmethod
    def jvp(ctx, dx, dgamma, dbeta, _num_groups, _scale):
        x, gamma = ctx.saved_tensors
        g = ctx.num_groups
        shape = (1, ctx.x_shape[1]) + (1,) * (len(ctx.x_shape) - 2)
        out = None
        if dx is not None:   # linear in x: the same map with beta = 0
            out = _mean_only_group_norm(dx, gamma, None if gamma is None else torch.zeros_like(gamma), g, ctx.scale)
        if dgamma is not None:
            term = dgamma.reshape(shape) * (x - _per_channel(_group_means(x, g), (x.shape[0],) + shape[1:]))
            out = term if out is None else out + term
        if dbeta is not None:
            term = dbeta.reshape(shape).expand(ctx.x_shape)
            out = term if out is None else out + term
        return out


class StandardGroupNorm(nn.GroupNorm):
    """torch's GroupNorm with a :meth:`lipschitz` that states it has no finite global bound."""

    def forward(self, x: torch.Tensor, gamma_scale: float = 1.0, beta_scale: float = 1.0) -> torch.Tensor:
        """gamma_scale * gamma * normalised(x) + beta_scale * beta (scales as in MeanOnlyGroupNorm)."""
        if gamma_scale == 1.0 and beta_scale == 1.0:
            return super().forward(x)
        if self.weight is None:
            return gamma_scale * super().forward(x)
        return F.group_norm(x, self.num_groups, self.weight * gamma_scale, self.bias * beta_scale, self.eps)

    def lipschitz(self) -> float:
        return float("inf")


class MeanOnlyGroupNorm(nn.Module):
    """y = clamp(gamma, +-gamma_max) * (x - mean over (group, H, W)) + beta; no division by the std."""

    def __init__(self, num_groups: int, num_channels: int, affine: bool = True, gamma_max: float = 1.0):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.gamma_max = float(gamma_max)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._frozen = None

    def effective_gamma(self):
        """gamma clipped to [-gamma_max, gamma_max], straight-through gradient (None without affine)."""
        if self.weight is None:
            return None
        return clip_straight_through(self.weight, self.gamma_max)

    def forward(self, x: torch.Tensor, gamma_scale: float = 1.0, beta_scale: float = 1.0) -> torch.Tensor:
        """gamma_scale * gamma_eff * (x - mean_g x) + beta_scale * beta.

        The scales let a neighbouring positive scalar fold in at no cost (s * relu(GN(x)) =
        relu(GN(x) with both scales s); GN(s * x) = GN(x) with gamma_scale s). With affine parameters the
        layer is evaluated as one pass, gamma' x + (beta' - gamma' mean_g x), after the mean."""
        gamma, beta = self._scaled_parameters(gamma_scale, beta_scale)
        differentiable = torch.is_grad_enabled() and (x.requires_grad or (gamma is not None and (
            gamma.requires_grad or beta.requires_grad)))
        if not differentiable:
            return _mean_only_group_norm(x, gamma, beta, self.num_groups, gamma_scale)
        return _MeanOnlyGroupNormFn.apply(x, gamma, beta, self.num_groups, gamma_scale)

    def _scaled_parameters(self, gamma_scale: float, beta_scale: float):
        """(gamma_scale * gamma_eff, beta_scale * beta), or (None, None) without affine; inside :meth:`frozen`
        computed once per pair of scales."""
        if self.weight is None:
            return None, None

        def compute():
            return (self.effective_gamma() * gamma_scale,
                    self.bias * beta_scale if beta_scale != 1.0 else self.bias)

        if self._frozen is None:
            return compute()
        cache, grad = self._frozen
        key = (gamma_scale, beta_scale)
        if key not in cache:
            with torch.set_grad_enabled(grad):
                cache[key] = compute()
        return cache[key]

    @contextmanager
    def frozen(self):
        """Within the block the scaled parameters are computed once per pair of scales, in the grad mode of
        the block's entry (so a first use inside a no-grad solve still keeps their graph for the tracked
        evaluation), and reused by every call (the many f-evaluations of one solve); gradients reach
        gamma and beta through that one computation. Nested blocks keep their own and restore the outer."""
        outer = self._frozen
        self._frozen = ({}, torch.is_grad_enabled())
        try:
            yield
        finally:
            self._frozen = outer

    def lipschitz(self) -> torch.Tensor | float:
        """max |gamma_eff| (a 0-d tensor), or 1 without affine."""
        gamma = self.effective_gamma()
        return 1.0 if gamma is None else gamma.detach().abs().max()

    @torch.no_grad()
    def project_(self) -> None:
        """Clip the stored gamma into [-gamma_max, gamma_max] in place."""
        if self.weight is not None:
            self.weight.clamp_(-self.gamma_max, self.gamma_max)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, affine={self.weight is not None}, "
                f"gamma_max={self.gamma_max}")


def group_norm(lipschitz: bool, num_groups: int, num_channels: int, affine: bool, gamma_max: float = 1.0):
    """The cell's group norm: mean-only with a gamma cap for the Lipschitz variant, else standard."""
    if lipschitz:
        return MeanOnlyGroupNorm(num_groups, num_channels, affine=affine, gamma_max=gamma_max)
    return StandardGroupNorm(num_groups, num_channels, affine=affine)
