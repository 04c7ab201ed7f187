"""``lipschitz_bound(module)``: a certified upper bound on the Lipschitz constant of a module, in the l2 norm (per
sample), composed through the module tree by exact rules — never guessed.

Every module type has a *rule*, ``rule(module, bound) -> number``, which returns the module's bound from those of
its children (``bound(child)``, a recursive call). The rules for lmdeq's blocks and a few torch modules are here
and in the modules that define composite blocks; :func:`register_lipschitz_rule` is the documented extension
point for a user's own module type. A module without a rule — ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``,
``nn.GroupNorm``, ``nn.MultiheadAttention``, ``nn.Dropout``, a user's module — is refused with
:class:`~lmdeq.errors.UnsupportedError` naming its qualified name and class (and what to use instead): there is
no fallback. A subclass inherits its base's rule only when it does not override ``forward``.

The rules and their math (x, y inputs of the same shape; each bound is in the l2 norm of the flattened sample):

* :class:`CappedConv2d`, :class:`CappedLinear`: min(cap, (1 + margin) sigma_hat) (capped.py; inf uncapped).
* :class:`MeanOnlyGroupNorm`: max |gamma_eff| (1 without affine): x - mean_g x is an orthogonal projection.
* :class:`ScaledActivation` (ScaledReLU, ScaledTanh, ScaledLeakyReLU, ScaledAbs): s. torch's ``nn.ReLU``,
  ``nn.Tanh``, ``nn.Hardtanh``, ``nn.Identity``: 1; ``nn.LeakyReLU``: max(1, |negative_slope|); ``nn.ELU``:
  max(1, alpha); ``nn.Sigmoid``: 1/4; ``nn.Softplus``: 1 (elementwise maps: the sup of |phi'|).
* ``nn.Upsample`` (nearest, integer factors a, b): sqrt(a b) (each value is copied a b times).
* :class:`VariationalDropout2d`: 1/(1-p) in training mode (a diagonal with entries 0 or 1/(1-p)), 1 in eval.
* ``nn.Sequential`` and :class:`lmdeq.models.Sequential`: the product of the children's bounds
  (Lip(g o h) <= Lip(g) Lip(h)); :class:`Residual`: 1 + Lip(g); :class:`ConvexResidual`: (1 - a) + a Lip(g);
  :class:`Parallel`: sum_i |w_i| Lip(g_i); :class:`AddInput`: 1 (it adds a term that does not depend on z).
* The MDEQ's blocks (residual_block.py, fusion.py, mdeq_cell.py): their docstrings.

Unbounded layers (an uncapped CappedConv2d, the original MDEQ's StandardGroupNorm) have the bound inf; with
``allow_unbounded=False`` (the default) :func:`lipschitz_bound` refuses them too, naming each one.

``worst_case=True`` bounds the module over every state its parameters may reach before the next norm refresh:
a GroupNorm by its gamma cap gamma_max (the optimiser may move gamma up to it), dropout by 1/(1-p) whatever the
mode (the training-mode bound). ``leaf_values`` replaces the bounds of chosen modules (the iteration budget's
trial caps, budget.py).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..errors import UnsupportedError
from .capped import CappedConv2d, CappedLinear, NormCapped
from .cell_parts import ScaledAbs, ScaledLeakyReLU, ScaledReLU, ScaledTanh, VariationalDropout2d
from .normalization import MeanOnlyGroupNorm, StandardGroupNorm

__all__ = ["lipschitz_bound", "register_lipschitz_rule", "lipschitz_rule", "BoundContext", "LIPSCHITZ_RULES"]

Rule = Callable[[nn.Module, "BoundContext"], object]
LIPSCHITZ_RULES: Dict[type, Rule] = {}

# What to use instead, for the modules users reach for most (the error message says it).
_HINTS = {
    nn.Conv2d: "use lmdeq.models.CappedConv2d (an operator-norm cap inside the forward pass)",
    nn.Linear: "use lmdeq.models.CappedLinear (an operator-norm cap inside the forward pass)",
    nn.BatchNorm1d: "batch statistics make it depend on the whole batch; use lmdeq.models.MeanOnlyGroupNorm",
    nn.BatchNorm2d: "batch statistics make it depend on the whole batch; use lmdeq.models.MeanOnlyGroupNorm",
    nn.GroupNorm: "dividing by the standard deviation is not globally Lipschitz; use lmdeq.models.MeanOnlyGroupNorm",
    nn.LayerNorm: "dividing by the standard deviation is not globally Lipschitz; use lmdeq.models.MeanOnlyGroupNorm",
    nn.MultiheadAttention: "dot-product attention is not globally Lipschitz",
    nn.Dropout: "it draws a new mask at every call, so f would change between iterations; use "
                "lmdeq.models.cell_parts.VariationalDropout2d (one mask per forward pass) or no dropout",
    nn.GELU: "no rule is registered (its slope exceeds 1); use ScaledReLU, ScaledTanh, ScaledLeakyReLU or ScaledAbs",
}


def register_lipschitz_rule(cls: type, rule: Optional[Rule] = None):
    """Register ``rule(module, bound) -> number`` as the certified Lipschitz bound of modules of type ``cls``
    (``bound(child)`` gives a child's bound). Usable as a decorator: ``@register_lipschitz_rule(MyBlock)``. The rule
    is a promise: lipschitz_bound trusts it, so it must be an upper bound proven for the module's forward."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_lipschitz_rule: cls must be an nn.Module subclass, got {cls!r}")

    def register(fn: Rule) -> Rule:
        if not callable(fn):
            raise TypeError(f"register_lipschitz_rule: the rule for {cls.__name__} must be callable, got {fn!r}")
        LIPSCHITZ_RULES[cls] = fn
        return fn

    return register if rule is None else register(rule)


def lipschitz_rule(module: nn.Module) -> Optional[Rule]:
    """The rule for ``module``'s type: its own, else that of the nearest base class whose forward it keeps."""
    cls = type(module)
    if cls in LIPSCHITZ_RULES:
        return LIPSCHITZ_RULES[cls]
    for base in cls.__mro__[1:]:
        if base in LIPSCHITZ_RULES:
            return LIPSCHITZ_RULES[base] if getattr(cls, "forward", None) is getattr(base, "forward", None) else None
    return None


class BoundContext:
    """The evaluation of one :func:`lipschitz_bound` call: ``ctx(child)`` is a child's bound; ``worst_case``,
    ``leaf_values`` as in the module docstring; ``unbounded(module, why)`` records an infinite bound and why."""

    def __init__(self, root: nn.Module, worst_case: bool = False, leaf_values: Optional[dict] = None):
        self.root = root
        self.worst_case = worst_case
        self.leaf_values = leaf_values or {}
        self.why_unbounded = []

    def name_of(self, module: nn.Module) -> str:
        for name, m in self.root.named_modules(remove_duplicate=False):
            if m is module:
                return name or "<root>"
        return f"<{type(module).__name__} outside the root module>"

    def unbounded(self, module: nn.Module, why: str) -> float:
        self.why_unbounded.append(f"{self.name_of(module)!r} ({type(module).__name__}): {why}")
        return math.inf

    def __call__(self, module: nn.Module):
        if module in self.leaf_values:
            return self.leaf_values[module]
        rule = lipschitz_rule(module)
        if rule is None:
            cls = type(module)
            hint = next((h for base, h in _HINTS.items() if isinstance(module, base)), None)
            raise UnsupportedError(
                f"lipschitz_bound: cannot certify {self.name_of(module)!r} ({cls.__module__}.{cls.__qualname__}) "
                f"in {type(self.root).__name__}: "
                + (f"{hint}. " if hint else "no Lipschitz rule is registered for its type. ")
                + "Build f from lmdeq.models' certified blocks, or register a proven rule with "
                "lmdeq.models.register_lipschitz_rule")
        return rule(module, self)


def lipschitz_bound(module: nn.Module, *, allow_unbounded: bool = False, worst_case: bool = False,
                    leaf_values: Optional[dict] = None) -> float:
    """A certified upper bound on the Lipschitz constant of ``module`` (module docstring), as a python float; for a
    DEQ's f(z, x), the constant in z. UnsupportedError naming the module for any part without a rule, and (unless
    ``allow_unbounded``) for parts whose bound is infinite. One device read-back."""
    ctx = BoundContext(module, worst_case=worst_case, leaf_values=leaf_values)
    value = ctx(module)
    value = float(value.detach()) if torch.is_tensor(value) else float(value)
    if ctx.why_unbounded and not allow_unbounded:
        raise UnsupportedError("lipschitz_bound: no finite bound: " + "; ".join(ctx.why_unbounded))
    return value


def product(values):
    """v_1 * v_2 * ... left to right (python floats and 0-d tensors)."""
    out = None
    for v in values:
        out = v if out is None else out * v
    return 1.0 if out is None else out


# -- rules of the leaf blocks -------------------------------------------------------------------------------------
def _capped(m: NormCapped, ctx: BoundContext):
    if m.cap is None:
        return ctx.unbounded(m, "it has no cap (cap=None), so nothing bounds its operator norm")
    return m.lipschitz()


register_lipschitz_rule(CappedConv2d, _capped)
register_lipschitz_rule(CappedLinear, _capped)


@register_lipschitz_rule(MeanOnlyGroupNorm)
def _mean_only_group_norm(m: MeanOnlyGroupNorm, ctx: BoundContext):
    if ctx.worst_case:
        return m.gamma_max if m.weight is not None else 1.0
    return m.lipschitz()


@register_lipschitz_rule(StandardGroupNorm)
def _standard_group_norm(m, ctx: BoundContext):
    return ctx.unbounded(m, "dividing by the group's standard deviation is not globally Lipschitz")


def _scaled_activation(m, ctx):
    return m.lipschitz()


for _cls in (ScaledReLU, ScaledTanh, ScaledLeakyReLU, ScaledAbs):
    register_lipschitz_rule(_cls, _scaled_activation)


@register_lipschitz_rule(VariationalDropout2d)
def _variational_dropout(m: VariationalDropout2d, ctx: BoundContext):
    if ctx.worst_case:
        return 1.0 / (1.0 - m.p) if m.p > 0 else 1.0
    return m.lipschitz()


for _cls in (nn.Identity, nn.ReLU, nn.Tanh, nn.Hardtanh, nn.Softplus):
    register_lipschitz_rule(_cls, lambda m, ctx: 1.0)
register_lipschitz_rule(nn.LeakyReLU, lambda m, ctx: max(1.0, abs(float(m.negative_slope))))
register_lipschitz_rule(nn.ELU, lambda m, ctx: max(1.0, float(m.alpha)))
register_lipschitz_rule(nn.Sigmoid, lambda m, ctx: 0.25)


@register_lipschitz_rule(nn.Upsample)
def _upsample(m: nn.Upsample, ctx: BoundContext):
    factors = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,) * 2
    if m.mode != "nearest" or m.size is not None or m.scale_factor is None or len(factors) != 2 or any(
            float(f) != int(f) or f < 1 for f in factors):
        return ctx.unbounded(m, "only nearest upsampling of a 2-d image by integer scale factors has a rule")
    return math.sqrt(float(factors[0]) * float(factors[1]))


@register_lipschitz_rule(nn.Sequential)
def _sequential(m: nn.Sequential, ctx: BoundContext):
    return product(ctx(child) for child in m)
