"""MDEQ presets, their hyperparameters, validation, and the ``mdeq()`` factory.

``mdeq(preset, lipschitz=True, **overrides)`` resolves a full, JSON-serialisable config (preset,
variant, architecture, solver, and for the Lipschitz variant the paper's knobs) and builds an
:class:`~lmdeq.models.classifier.MDEQClassifier`; ``mdeq(**model.config)`` rebuilds the same model.
Every key is checked: an unknown or misspelt override is an error, never silently ignored.

Original MDEQ (``lipschitz=False``, Bai et al. 2020, locuslab/deq experiments/cifar/cls_mdeq_LARGE.yaml and
cls_mdeq_TINY.yaml): Broyden forward and backward, relative tolerance 1e-3, 18/20 iterations (both presets),
the adjoint started at 0. Its recipe begins with an unrolled warm-up (``unrolled_warmup_steps``,
``unrolled_layers``): for the first PRETRAIN_STEPS optimiser steps f is applied NUM_LAYERS = 10 times from
z = 0 as an explicit network (training and evaluation alike), then the model switches to DEQ mode;
:func:`original_warmup_steps` scales the recipe's PRETRAIN_STEPS to another schedule length.

Lipschitz MDEQ (``lipschitz=True``, Sato & Iiduka, AISTATS 2026; the authors' released defaults):
s = 0.4, gamma_max = 1.0, alpha = 0.5, beta = 0.3, conv_cap = 2.0. Default solver: plain fixed-point
iteration, the cheapest per step, which the certified bound L < 1 guarantees to converge; with
``f_max_iter=None`` / ``b_max_iter=None`` the iteration limit is the a-priori count for L (see
:mod:`lmdeq.models.apriori`), and ``solve_mode='apriori'`` runs exactly that count with no
convergence checks. The authors' solver as released is ``mdeq(..., **AUTHORS_SOLVER)``
(:func:`lmdeq.solvers.authors_anderson`, adjoint from 0) and their constraint as released
``constraint='released'`` (see :data:`CONSTRAINTS`). ``cuda_graphs=True`` (default) replays each
fixed-count solve (``solve_mode='apriori'``) as one CUDA graph on CUDA devices.
"""
from __future__ import annotations

import copy
import math

from ..deq import BACKWARD_MODES
from ..solvers import get_solver

__all__ = ["PRESETS", "AUTHORS_SOLVER", "CONSTRAINTS", "mdeq", "resolve_config", "original_warmup_steps"]

PRESETS = {
    "cifar10-large": dict(channels=[32, 64, 128, 256], expansion=5, num_groups=8, dropout=0.3,
                          head_channels=[14, 28, 56, 112], final_channels=1680,
                          original_iters=(18, 20), original_warmup=(20000, 220 * 391)),
    "cifar10-small": dict(channels=[24, 24], expansion=5, num_groups=8, dropout=0.25,
                          head_channels=[8, 16], final_channels=200,
                          original_iters=(18, 20), original_warmup=(3000, 50 * 391)),
}
# original_warmup = (PRETRAIN_STEPS, schedule length in steps) of the locuslab recipe: LARGE 20,000 of
# 220 epochs x 391 steps (4 GPUs x 32 images), TINY (MDEQ-small) 3,000 of 50 epochs x 391 (2 GPUs x 64).
UNROLLED_LAYERS = 10   # NUM_LAYERS of both CIFAR-10 recipes

# The conv constraint of the Lipschitz variant:
# 'certified': lmdeq's cap of each conv's true operator norm inside the forward pass (certifies L < 1);
# 'released':  the authors' code as released (authors_cap.py): after every optimiser step one power-iteration
#              step on the reshaped kernel of every nn.Conv2d of the whole model, which weight norm undoes
#              for the weight-normed convs of f; certifies nothing;
# 'none':      no conv cap at all (the GroupNorm gammas are still projected); certifies nothing.
CONSTRAINTS = ("certified", "released", "none")

# The authors' solver as released (iiduka-researches/Lipschitz_mdeq cls_mdeq_LARGE.yaml: Anderson m = 6,
# lam = 1e-4, 18/20 iterations, rel tol 1e-3; the adjoint solve starts at 0).
AUTHORS_SOLVER = dict(solver="authors_anderson", b_solver="authors_anderson", f_max_iter=18, b_max_iter=20,
                      f_tol=1e-3, b_tol=1e-3, stop_mode="rel", solver_kwargs={"m": 6, "lam": 1e-4},
                      b_solver_kwargs={"m": 6, "lam": 1e-4}, b_x0="zeros")

_ARCH_KEYS = ("channels", "expansion", "num_groups", "dropout", "head_channels", "final_channels")
_COMMON_DEFAULTS = dict(num_classes=10, weight_norm=True, f_tol=1e-3, b_tol=1e-3, stop_mode="rel",
                        solver_kwargs={}, b_solver_kwargs={}, b_x0="v", backward="implicit", solve_mode="checked",
                        cuda_graphs=True, unrolled_warmup_steps=0, unrolled_layers=UNROLLED_LAYERS)
_LIPSCHITZ_DEFAULTS = dict(s=0.4, gamma_max=1.0, alpha=0.5, beta=0.3, conv_cap=2.0, constraint="certified",
                           sigma_margin=0.05,
                           power_iters=2, init_power_iters=30, solver="fixed_point",
                           b_solver="fixed_point", f_max_iter=None, b_max_iter=None)
_LIPSCHITZ_ONLY = ("s", "gamma_max", "alpha", "beta", "conv_cap", "constraint", "sigma_margin", "power_iters",
                   "init_power_iters")


def _defaults(preset: str, lipschitz: bool) -> dict:
    spec = PRESETS[preset]
    cfg = {"preset": preset, "lipschitz": lipschitz}
    cfg.update({k: copy.deepcopy(spec[k]) for k in _ARCH_KEYS})
    cfg.update(copy.deepcopy(_COMMON_DEFAULTS))
    if lipschitz:
        cfg.update(_LIPSCHITZ_DEFAULTS)
    else:
        f_iter, b_iter = spec["original_iters"]
        cfg.update(solver="broyden", b_solver="broyden", f_max_iter=f_iter, b_max_iter=b_iter, b_x0="zeros")
    return cfg


def original_warmup_steps(preset: str, total_steps: int) -> int:
    """The original recipe's unrolled warm-up scaled to a schedule of ``total_steps`` optimiser steps:
    round(total_steps * PRETRAIN_STEPS / recipe length), e.g. 3,000 of 19,550 steps for MDEQ-small."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    pretrain, length = PRESETS[preset]["original_warmup"]
    return round(total_steps * pretrain / length)


def resolve_config(preset: str, lipschitz: bool = True, **overrides) -> dict:
    """The full config for ``preset`` and variant with ``overrides`` applied, validated."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not isinstance(lipschitz, bool):
        raise TypeError(f"lipschitz must be a bool, got {type(lipschitz).__name__}")
    cfg = _defaults(preset, lipschitz)
    if not lipschitz:
        misplaced = sorted(k for k in overrides if k in _LIPSCHITZ_ONLY)
        if misplaced:
            raise ValueError(f"{misplaced} only apply to the Lipschitz variant (lipschitz=True)")
    unknown = sorted(k for k in overrides if k not in cfg)
    if unknown:
        raise TypeError(f"unknown mdeq override(s) {unknown}; valid keys: {sorted(cfg)}")
    cfg.update(copy.deepcopy(overrides))
    _validate(cfg)
    return cfg


def mdeq(preset: str, lipschitz: bool = True, **overrides):
    """Build the MDEQ classifier ``preset`` (see :data:`PRESETS`), original or Lipschitz variant."""
    from .classifier import MDEQClassifier  # classifier imports this module

    return MDEQClassifier(resolve_config(preset, lipschitz, **overrides))


# -- validation ----------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(cfg, key, minimum=1):
    if not _is_int(cfg[key]) or cfg[key] < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {cfg[key]!r}")


def _number_in(cfg, key, low, high, low_open=False):
    v = cfg[key]
    ok = _is_number(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        bracket = "(" if low_open else "["
        top = "inf)" if high is None else f"{high}]"
        raise ValueError(f"{key} must be a number in {bracket}{low}, {top}, got {v!r}")


def _int_list(cfg, key, length=None):
    v = cfg[key]
    if not isinstance(v, (list, tuple)) or not v or not all(_is_int(c) and c >= 1 for c in v):
        raise ValueError(f"{key} must be a non-empty list of positive ints, got {v!r}")
    if length is not None and len(v) != length:
        raise ValueError(f"{key} must have one entry per branch ({length}), got {len(v)}")
    cfg[key] = list(v)


def _validate(cfg: dict) -> None:
    _int_list(cfg, "channels")
    n = len(cfg["channels"])
    if not 2 <= n <= 5:
        raise ValueError(f"channels must list 2 to 5 branches (32x32 input, resolution halves per branch), got {n}")
    _int_list(cfg, "head_channels", length=n)
    for key in ("expansion", "num_groups", "final_channels", "num_classes"):
        _positive_int(cfg, key)
    groups = cfg["num_groups"]
    for c in cfg["channels"]:
        if c % groups or (c * cfg["expansion"]) % groups or c % max(1, groups // 2):
            raise ValueError(f"channels ({c}), channels * expansion and channels after fusion must be "
                             f"divisible by num_groups ({groups}) and num_groups // 2")
    _number_in(cfg, "dropout", 0.0, None)
    if cfg["dropout"] >= 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg['dropout']!r}")
    for key in ("weight_norm", "cuda_graphs"):
        if not isinstance(cfg[key], bool):
            raise TypeError(f"{key} must be a bool, got {type(cfg[key]).__name__}")
    _positive_int(cfg, "unrolled_warmup_steps", minimum=0)
    _positive_int(cfg, "unrolled_layers")
    if cfg["lipschitz"] and cfg["constraint"] not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {cfg['constraint']!r}")
    _validate_solver(cfg)
    if cfg["lipschitz"]:
        _number_in(cfg, "s", 0.0, None, low_open=True)
        _number_in(cfg, "gamma_max", 0.0, None, low_open=True)
        _number_in(cfg, "alpha", 0.0, 1.0)
        _number_in(cfg, "beta", 0.0, 1.0)
        _number_in(cfg, "conv_cap", 0.0, None, low_open=True)
        _number_in(cfg, "sigma_margin", 0.0, None)
        _positive_int(cfg, "power_iters")
        _positive_int(cfg, "init_power_iters")


def _validate_solver(cfg: dict) -> None:
    for key in ("solver", "b_solver"):
        if not isinstance(cfg[key], str):
            raise TypeError(f"{key} must be a solver name (str), got {type(cfg[key]).__name__}")
        get_solver(cfg[key])
    for key in ("f_max_iter", "b_max_iter"):
        if cfg[key] is None and not cfg["lipschitz"]:
            raise ValueError(f"{key}=None (the a-priori count) needs the certified bound of lipschitz=True")
        if cfg[key] is not None:
            _positive_int(cfg, key)
    _number_in(cfg, "f_tol", 0.0, None, low_open=True)
    _number_in(cfg, "b_tol", 0.0, None, low_open=True)
    if cfg["stop_mode"] not in ("abs", "rel"):
        raise ValueError(f"stop_mode must be 'abs' or 'rel', got {cfg['stop_mode']!r}")
    if cfg["b_x0"] not in ("v", "zeros"):
        raise ValueError(f"b_x0 must be 'v' (start the adjoint at the upstream gradient) or 'zeros', got {cfg['b_x0']!r}")
    for key in ("solver_kwargs", "b_solver_kwargs"):
        if not isinstance(cfg[key], dict):
            raise TypeError(f"{key} must be a dict, got {type(cfg[key]).__name__}")
    if cfg["backward"] not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {BACKWARD_MODES}, got {cfg['backward']!r}")
    mode = cfg["solve_mode"]
    if mode not in ("checked", "apriori"):
        raise ValueError(f"solve_mode must be 'checked' or 'apriori', got {mode!r}")
    needs_bound = mode == "apriori" or cfg["f_max_iter"] is None or cfg["b_max_iter"] is None
    if needs_bound and cfg["lipschitz"] and cfg["constraint"] != "certified":
        raise ValueError(f"constraint={cfg['constraint']!r} certifies no bound, so there is no a-priori iteration "
                         "count: set f_max_iter and b_max_iter, and solve_mode='checked'")
    if needs_bound and cfg["stop_mode"] != "rel":
        raise ValueError("the a-priori iteration count (solve_mode='apriori' or *_max_iter=None) is derived "
                         "for stop_mode='rel' from the zero initial state; set stop_mode='rel'")
    if mode == "apriori":
        if not cfg["lipschitz"]:
            raise ValueError("solve_mode='apriori' needs the certified bound of lipschitz=True")
        if cfg["solver"] != "fixed_point" or cfg["b_solver"] != "fixed_point":
            raise ValueError("solve_mode='apriori' counts Picard steps: solver and b_solver must be 'fixed_point'")
    if (mode == "apriori" or cfg["b_max_iter"] is None) and cfg["b_x0"] != "v":
        raise ValueError("the a-priori adjoint count is derived for the adjoint started at v: set b_x0='v'")
