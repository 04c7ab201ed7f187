"""Multiscale DEQ image classifiers: the original MDEQ and the Lipschitz MDEQ with a certified bound.

``mdeq(preset, lipschitz=True, **overrides)`` builds a model; ``PRESETS`` names the presets;
``AUTHORS_SOLVER`` holds the Lipschitz-MDEQ authors' solves as released (their Anderson, m=6, 18/20
iterations, adjoint from 0): with ``constraint='released'`` it is their model as released (baseline (b)).
``APRIORI_SOLVES`` runs both solves at exactly their certified counts (no checks, no host sync).
``pretrained("cifar10-small-lipschitz")`` is a published model, ready in eval mode (``PUBLISHED``: its data,
normalisation, accuracy and bound). ``RELEASED_JR`` holds the released MDEQ + Jacobian regularisation recipe (cls_mdeq_LARGE_reg.yaml): with
``lipschitz=False`` it is baseline (a-JR); ``model(x, jac_loss=True)`` returns the logits and the JR estimate.
"""
from .classifier import MDEQClassifier, mdeq
from .presets import APRIORI_SOLVES, AUTHORS_SOLVER, PRESETS, RELEASED_JR, resolve_config
from .published import PUBLISHED, pretrained

__all__ = ["mdeq", "pretrained", "PUBLISHED", "PRESETS", "AUTHORS_SOLVER", "APRIORI_SOLVES", "RELEASED_JR",
           "MDEQClassifier", "resolve_config"]
