"""Compositions of certified blocks, for building a DEQ's f(z, x) whose Lipschitz constant in z
:func:`lmdeq.models.lipschitz_bound` certifies (then :class:`lmdeq.models.CertifiedDEQ` solves it):

* :class:`Sequential` (g_n o ... o g_1)(z):           Lip <= prod_i Lip(g_i)
* :class:`Residual`   z + g(z):                        Lip <= 1 + Lip(g)
* :class:`ConvexResidual` (1 - a) z + a g(z), a in [0, 1]:   Lip <= (1 - a) + a Lip(g)
* :class:`Parallel`   sum_i w_i g_i(z) (a weighted sum of branches):   Lip <= sum_i |w_i| Lip(g_i)
* :class:`AddInput`   z + x (the DEQ's input injection; x does not depend on z):   Lip = 1

each by the triangle inequality and Lip(g o h) <= Lip(g) Lip(h). The leaves are lmdeq's certified layers
(:class:`CappedConv2d`, :class:`CappedLinear`, :class:`MeanOnlyGroupNorm`, the scaled activations, ...) or
any module with a registered rule (:func:`lmdeq.models.register_lipschitz_rule`).

The input x reaches every block that takes it: a module with a true ``takes_input`` attribute is called as
``block(z, x)``, any other as ``block(z)``. All compositions here take it, so ``f(z, x)`` works at any depth.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .. import checks
from .lipschitz import product, register_lipschitz_rule

__all__ = ["Sequential", "Residual", "ConvexResidual", "Parallel", "AddInput", "call_block"]


def call_block(block: nn.Module, z, x=None):
    """``block(z, x)`` for a block that takes the input (``takes_input``), else ``block(z)``."""
    return block(z, x) if getattr(block, "takes_input", False) else block(z)


class Sequential(nn.Sequential):
    """g_n(...g_2(g_1(z, x), x)..., x): blocks applied in order; Lipschitz bound the product of theirs."""

    takes_input = True

    def forward(self, z, x=None):
        for block in self:
            z = call_block(block, z, x)
        return z


class Residual(nn.Module):
    """z + g(z, x); Lipschitz bound 1 + Lip(g)."""

    takes_input = True

    def __init__(self, g: nn.Module):
        super().__init__()
        self.g = g

    def forward(self, z, x=None):
        return z + call_block(self.g, z, x)


class ConvexResidual(nn.Module):
    """(1 - alpha) z + alpha g(z, x) with alpha in [0, 1]; Lipschitz bound (1 - alpha) + alpha Lip(g), below 1
    whenever Lip(g) < 1 (the Lipschitz MDEQ's residual, alpha = 0.5)."""

    takes_input = True

    def __init__(self, g: nn.Module, alpha: float = 0.5):
        super().__init__()
        self.g = g
        self.alpha = checks.number("alpha", alpha, 0, 1, where="ConvexResidual: ")

    def forward(self, z, x=None):
        return torch.add(self.alpha * call_block(self.g, z, x), z, alpha=1.0 - self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Parallel(nn.Module):
    """sum_i w_i g_i(z, x): branches on the same input, summed with weights (default 1/n each, a convex
    combination); Lipschitz bound sum_i |w_i| Lip(g_i)."""

    takes_input = True

    def __init__(self, *branches: nn.Module, weights: Optional[Sequence[float]] = None):
        super().__init__()
        if not branches:
            raise ValueError("Parallel: give at least one branch")
        self.branches = nn.ModuleList(branches)
        if weights is None:
            weights = [1.0 / len(branches)] * len(branches)
        if len(weights) != len(branches):
            raise ValueError(f"Parallel: {len(weights)} weights for {len(branches)} branches")
        self.weights = [checks.number(f"weights[{i}]", w, where="Parallel: ") for i, w in enumerate(weights)]

    def forward(self, z, x=None):
        out = None
        for w, branch in zip(self.weights, self.branches):
            term = w * call_block(branch, z, x)
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


class AddInput(nn.Module):
    """z + x: the DEQ's input injection (x must have z's shape: project the input before the solve, e.g. with
    CertifiedDEQ's ``injection``); Lipschitz constant 1 in z."""

    takes_input = True

    def forward(self, z, x=None):
        if x is None:
            raise ValueError("AddInput: no input x was given (call f(z, x))")
        return z + x


@register_lipschitz_rule(Sequential)
def _sequential(m: Sequential, ctx):
    return product(ctx(block) for block in m)


@register_lipschitz_rule(Residual)
def _residual(m: Residual, ctx):
    return 1.0 + ctx(m.g)


@register_lipschitz_rule(ConvexResidual)
def _convex_residual(m: ConvexResidual, ctx):
    return (1.0 - m.alpha) + m.alpha * ctx(m.g)


@register_lipschitz_rule(Parallel)
def _parallel(m: Parallel, ctx):
    return sum(abs(w) * ctx(b) for w, b in zip(m.weights, m.branches))


@register_lipschitz_rule(AddInput)
def _add_input(m, ctx):
    return 1.0
