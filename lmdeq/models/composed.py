"""Tighter certified bounds: the norm of a linear composition estimated as a whole, instead of the product of its
factors' bounds (``bound='composed'`` of the MDEQ config; :class:`LinearChain` for a DEQ of your own).

Where f applies linear maps one after another with no nonlinearity between them — a convolution then a mean-only
GroupNorm (its linear part gamma_eff (x - mean_g x)), or the whole multiscale fusion of a two-branch cell (each
branch's last GroupNorm, the fusion paths' convolution and GroupNorm, nearest upsampling, the fusion weights) — the
composition A = A_n ... A_1 is itself a linear map, and ||A||_2 <= prod_i ||A_i||_2 can be far from equality
(the factors' top singular vectors need not align; the GroupNorm's mean projection removes the part of a
convolution's output that is constant over a group). :class:`ComposedNorm` estimates ||A||_2 by warm-started power
iteration on A^T A — the same algorithm, and the same assumption, as every capped layer's estimate: the true norm
is at most (1 + margin) times the estimate (checked against dense Jacobians and long power iterations in the
tests). Under that assumption

    Lip(x -> A x + c) = ||A||_2 <= min(prod_i Lip(A_i), (1 + margin) sigma_hat(A)),

and the minimum of two upper bounds is an upper bound. The estimate runs on the maps the forward pass uses (the
effective, capped weights and the clipped gammas, detached), with a persistent vector per input (a buffer, saved
with the weights, so a resumed run continues from the same estimate). It is refreshed with the capped layers'
estimates after every optimiser step, after the budget's cap scale is set (it reads the effective weights), and is
stale — re-estimated before use — when a member's parameters, estimate or cap scale changed since.

Where the bound is evaluated in the worst case or with trial leaf values (an iteration budget's enforcement,
budget.py), the composed estimate does not apply (it was made for the current weights): the layerwise bound, which
is never smaller, is used, so a budget enforced on it holds for the composed bound too.

A checkpoint saved without these buffers (a layerwise model) loads into a composed model: the missing vectors are
left as drawn and the estimate is made at the first use (:meth:`ComposedNorm._load_from_state_dict`).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .capped import NormCapped
from .cell_parts import VariationalDropout2d
from .lipschitz import product, register_lipschitz_rule
from .normalization import MeanOnlyGroupNorm, _mean_only_group_norm

__all__ = ["ComposedNorm", "ChainNorm", "LinearChain", "linear_part", "LINEAR_LAYERS"]

LINEAR_LAYERS = (NormCapped, MeanOnlyGroupNorm, nn.Identity, nn.Upsample)


def linear_part(module, x: torch.Tensor) -> torch.Tensor:
    """The linear part of an affine layer as the forward pass uses it, with detached parameters: a capped layer's
    x -> W_eff x, a mean-only GroupNorm's gamma_eff (x - mean_g x) (beta dropped), nearest upsampling, the identity
    (an inactive dropout) or a python number's scaling."""
    if isinstance(module, (int, float)):
        return x * float(module)
    if isinstance(module, NormCapped):
        w = module.effective_weight().detach()
        if w.dim() == 4:
            return F.conv2d(x, w, stride=module.stride, padding=module.padding)
        return F.linear(x, w)
    if isinstance(module, MeanOnlyGroupNorm):
        gamma = module.effective_gamma()
        gamma = None if gamma is None else gamma.detach()
        return _mean_only_group_norm(x, gamma, None if gamma is None else torch.zeros_like(gamma),
                                     module.num_groups, 1.0)
    if isinstance(module, nn.Upsample):
        return F.interpolate(x, scale_factor=module.scale_factor, mode="nearest")
    if isinstance(module, nn.Identity) or (isinstance(module, VariationalDropout2d) and not module.active()):
        return x
    raise TypeError(f"linear_part: {type(module).__name__} is not one of the linear layers {LINEAR_LAYERS}")


class ComposedNorm(nn.Module):
    """(1 + margin) x the power-iteration estimate of ||A||_2 for a linear map A of one or more inputs (module
    docstring). Subclasses define :meth:`apply` (A on a list of tensors, returning a list) and call
    :meth:`_init_estimate` with the input shapes and the member layers (kept unregistered: they belong to f)."""

    composed_norm = True   # (constraints.refresh_norm_estimates finds these)

    def _init_estimate(self, input_shapes: Sequence[tuple], members: Sequence[nn.Module], margin: float) -> None:
        self.margin = float(margin)
        self.__dict__["members"] = list(members)   # not submodules: f owns them
        self.register_buffer("sigma", torch.zeros(()))
        self.num_inputs = len(input_shapes)
        for k, shape in enumerate(input_shapes):
            v = torch.randn(shape)
            self.register_buffer(f"vector_{k}", v / v.norm())
        self._estimated_at = None

    def vectors(self) -> List[torch.Tensor]:
        return [getattr(self, f"vector_{k}") for k in range(self.num_inputs)]

    def apply(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        raise NotImplementedError

    def _members_key(self) -> tuple:
        key = []
        for m in self.members:
            if isinstance(m, nn.Module):
                key.extend(p._version for p in m.parameters(recurse=False))
                if isinstance(m, NormCapped) and m.cap is not None:
                    key.extend((m.sigma._version, m.cap_scale))
                if isinstance(m, VariationalDropout2d):
                    key.append(m.active())
        return tuple(key)

    def estimate_is_stale(self) -> bool:
        return self._estimated_at != self._members_key()

    @torch.no_grad()
    def refresh(self, n_iter: int) -> None:
        """``n_iter`` warm-started power iterations on A^T A (A^T by autograd), then sigma_hat = ||A v||."""
        vs = [v.clone() for v in self.vectors()]
        with torch.autocast(vs[0].device.type, enabled=False):
            for _ in range(n_iter):
                with torch.enable_grad():
                    leaves = [v.detach().requires_grad_() for v in vs]
                    out = self.apply(leaves)
                    grads = torch.autograd.grad(out, leaves, grad_outputs=[o.detach() for o in out])
                norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).to(vs[0].dtype)
                vs = [g / torch.clamp_min(norm, 1e-30) for g in grads]
            out = self.apply(vs)
            sigma = torch.sqrt(sum((o.double() ** 2).sum() for o in out))
        self.sigma.copy_(sigma)
        for buf, v in zip(self.vectors(), vs):
            buf.copy_(v)
        self._estimated_at = self._members_key()

    def bound(self) -> torch.Tensor:
        """(1 + margin) sigma_hat."""
        if self._estimated_at is None:
            raise RuntimeError("no composed-norm estimate yet: run lmdeq.models.refresh_norm_estimates")
        return self.sigma * (1.0 + self.margin)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        names = ["sigma"] + [f"vector_{k}" for k in range(self.num_inputs)]
        present = [prefix + n in state_dict for n in names]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if all(present):
            self._estimated_at = self._members_key()
        else:   # a checkpoint of a layerwise model: estimate at the first use (module docstring)
            for n, here in zip(names, present):
                if not here and prefix + n in missing_keys:
                    missing_keys.remove(prefix + n)
            self._estimated_at = None

    def extra_repr(self) -> str:
        return f"margin={self.margin}, inputs={self.num_inputs}"


class ChainNorm(ComposedNorm):
    """The norm of x -> A_n(...A_1(x)) for linear layers ``maps`` (:func:`linear_part`), on inputs of
    ``input_shape`` (1, ...)."""

    def __init__(self, maps: Sequence, input_shape: tuple, margin: float):
        super().__init__()
        self.__dict__["maps"] = list(maps)
        self._init_estimate([tuple(input_shape)], [m for m in maps if isinstance(m, nn.Module)], margin)

    def apply(self, xs):
        x = xs[0]
        for m in self.maps:
            x = linear_part(m, x)
        return [x]


def _chain_input_shape(layers) -> tuple | None:
    """The input shape (1, ...) of a chain: that of its first layer with an estimate input (a capped k x k
    convolution's power vector, a linear layer's in_features), through the shape-preserving GroupNorms before it."""
    for layer in layers:
        shape = layer.input_shape() if isinstance(layer, NormCapped) else None
        if shape is not None:
            return shape
        if isinstance(layer, NormCapped) and layer.cap is not None:   # a 1x1 conv: any spatial size
            return None
        if not isinstance(layer, (MeanOnlyGroupNorm, nn.Identity)):
            return None
    return None


class LinearChain(nn.Module):
    """Linear (affine) certified layers applied in order — capped convolutions and linear layers, mean-only
    GroupNorms, nearest upsampling — whose Lipschitz bound is min(product of the layers' bounds, (1 + margin)
    sigma_hat of the whole chain) (module docstring). ``input_shape`` (1, C, H, W) or (1, features): the input the
    chain's norm is estimated on (inferred from a first capped k x k convolution or linear layer)."""

    def __init__(self, *layers: nn.Module, input_shape: tuple | None = None, margin: float = 0.05):
        super().__init__()
        if not layers:
            raise ValueError("LinearChain: give at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, LINEAR_LAYERS):
                raise TypeError(f"LinearChain: layer {i} ({type(layer).__name__}) is not linear; its layers must be "
                                f"{[c.__name__ for c in LINEAR_LAYERS]}")
        self.layers = nn.ModuleList(layers)
        shape = input_shape if input_shape is not None else _chain_input_shape(layers)
        if shape is None:
            raise ValueError("LinearChain: give input_shape=(1, C, H, W): no layer fixes the input size its norm is "
                             "estimated on")
        self.norm = ChainNorm(list(layers), tuple(shape), margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@register_lipschitz_rule(LinearChain)
def _linear_chain(m: LinearChain, bound):
    layerwise = product(bound(layer) for layer in m.layers)
    if bound.worst_case or bound.leaf_values or m.norm._estimated_at is None or not _finite(layerwise):
        return layerwise
    return torch.minimum(torch.as_tensor(layerwise, dtype=m.norm.sigma.dtype, device=m.norm.sigma.device),
                         m.norm.bound())


def _finite(value) -> bool:
    return bool(torch.isfinite(value)) if torch.is_tensor(value) else math.isfinite(value)
