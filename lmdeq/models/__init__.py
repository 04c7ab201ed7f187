"""Multiscale DEQ image classifiers: the original MDEQ and the Lipschitz MDEQ with a certified bound.

``mdeq(preset, lipschitz=True, **overrides)`` builds a model; ``PRESETS`` names the presets;
``AUTHORS_SOLVER`` holds the Lipschitz-MDEQ authors' solver as released (their Anderson, m=6, 18/20
iterations, adjoint from 0); with ``constraint='released'`` it is their model as released (baseline (b)).
"""
from .classifier import MDEQClassifier, mdeq
from .presets import AUTHORS_SOLVER, PRESETS, resolve_config

__all__ = ["mdeq", "PRESETS", "AUTHORS_SOLVER", "MDEQClassifier", "resolve_config"]
