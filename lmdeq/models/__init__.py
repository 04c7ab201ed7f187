"""Multiscale DEQ image classifiers, and the certified building blocks they are made of.

``mdeq(preset, lipschitz=True, **overrides)`` builds a model; ``PRESETS`` names the presets;
``AUTHORS_SOLVER`` holds the Lipschitz-MDEQ authors' solves as released (their Anderson, m=6, 18/20
iterations, adjoint from 0): with ``constraint='released'`` it is their model as released (baseline (b)).
``APRIORI_SOLVES`` runs both solves at exactly their certified counts (no checks, no host sync).
``pretrained("cifar10-small-lipschitz")`` is a published model, ready in eval mode (``PUBLISHED``: its data,
normalisation, accuracy and bound). ``RELEASED_JR`` holds the released MDEQ + JR recipe (cls_mdeq_LARGE_reg.yaml): with
``lipschitz=False`` it is baseline (a-JR); ``model(x, jac_loss=True)`` returns the logits and the JR estimate.

Certified building blocks (each with its Lipschitz bound as ``lipschitz()`` and a rule of
:func:`lipschitz_bound`), for a DEQ f(z, x) of your own, solved by :class:`CertifiedDEQ`:

* layers: :class:`CappedConv2d`, :class:`CappedLinear` (operator norm capped inside the forward pass),
  :class:`MeanOnlyGroupNorm` (clipped gamma), :class:`ScaledReLU`, :class:`ScaledTanh`, :class:`ScaledLeakyReLU`,
  :class:`ScaledAbs`;
* compositions: :class:`Sequential`, :class:`Residual`, :class:`ConvexResidual`, :class:`Parallel` (weighted sum),
  :class:`AddInput` (the injection), :class:`MultiscaleFusion` (the MDEQ's convex fusion of branches);
* :func:`lipschitz_bound` composes the bounds and refuses what it cannot certify; :func:`register_lipschitz_rule`
  adds a rule for a module type of your own; :func:`refresh_norm_estimates` refreshes every capped layer of a
  module tree in one batched op call per kind; :class:`LinearChain` (and the MDEQ's ``bound='composed'``) bounds a
  linear composition by its own estimated norm, never above the product of its layers' bounds;
  :func:`verified_lipschitz_bound` is the same bound with every capped layer's norm verified
  (:func:`conv2d_norm_upper_bound`: no power-iteration estimate, no margin assumed).
"""
from .blocks import AddInput, ConvexResidual, Parallel, Residual, Sequential
from .capped import CappedConv2d, CappedLinear
from .cell_parts import ScaledAbs, ScaledLeakyReLU, ScaledReLU, ScaledTanh
from .certified import APRIORI_BACKWARD, APRIORI_FORWARD, CertifiedDEQ
from .classifier import MDEQClassifier, mdeq
from .composed import LinearChain
from .constraints import refresh_norm_estimates
from .fusion import MultiscaleFusion
from .lipschitz import lipschitz_bound, register_lipschitz_rule
from .normalization import MeanOnlyGroupNorm
from .presets import APRIORI_SOLVES, AUTHORS_SOLVER, PRESETS, RELEASED_JR, resolve_config
from .published import PUBLISHED, pretrained
from .verified import conv2d_norm_upper_bound, verified_lipschitz_bound

__all__ = ["mdeq", "pretrained", "PUBLISHED", "PRESETS", "AUTHORS_SOLVER", "APRIORI_SOLVES", "RELEASED_JR",
           "MDEQClassifier", "resolve_config",
           "CertifiedDEQ", "APRIORI_FORWARD", "APRIORI_BACKWARD", "lipschitz_bound", "register_lipschitz_rule",
           "refresh_norm_estimates", "CappedConv2d", "CappedLinear", "MeanOnlyGroupNorm", "ScaledReLU", "ScaledTanh",
           "ScaledLeakyReLU", "ScaledAbs", "Sequential", "Residual", "ConvexResidual", "Parallel", "AddInput",
           "MultiscaleFusion", "LinearChain", "verified_lipschitz_bound", "conv2d_norm_upper_bound"]
