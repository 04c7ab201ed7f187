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
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

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
        b, c = x.shape[:2]
        g = self.num_groups
        spatial = (1,) * (x.dim() - 2)
        # Group means from per-channel means (groups are equal-sized): a reduction that reads x in any
        # memory format, so channels_last inputs give channels_last outputs with no layout copy.
        mean = x.mean(dim=tuple(range(2, x.dim()))).reshape(b, g, c // g).mean(dim=-1, keepdim=True)
        mean = mean.expand(b, g, c // g).reshape((b, c) + spatial)
        if self.weight is None:
            out = x - mean
            return out if gamma_scale == 1.0 else out * gamma_scale
        gamma = (self.effective_gamma() * gamma_scale).reshape((1, c) + spatial)
        beta = (self.bias * beta_scale if beta_scale != 1.0 else self.bias).reshape((1, c) + spatial)
        return torch.addcmul(beta - gamma * mean, x, gamma)

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
