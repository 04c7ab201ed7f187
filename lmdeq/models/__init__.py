"""Multiscale DEQ image classifiers: the original MDEQ and the Lipschitz MDEQ with a certified bound.

``mdeq(preset, lipschitz=True, **overrides)`` builds a model; ``PRESETS`` names the presets;
``AUTHORS_SOLVER`` holds the Lipschitz-MDEQ authors' solver setting (Anderson m=6, 18/20 iterations).
"""
from .classifier import MDEQClassifier
from .presets import AUTHORS_SOLVER, PRESETS, mdeq, resolve_config

__all__ = ["mdeq", "PRESETS", "AUTHORS_SOLVER", "MDEQClassifier", "resolve_config"]
