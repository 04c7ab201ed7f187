"""MDEQ presets and their hyperparameters: data, and the validation of a model config.

:func:`resolve_config` (``preset``, ``lipschitz=True``, ``**overrides``) gives the full, JSON-serialisable config
(preset, variant, architecture, solves, and for the Lipschitz variant the paper's knobs) that
:func:`lmdeq.models.mdeq` builds a model from; ``mdeq(**model.config)`` rebuilds the same model. Every key is
checked: an unknown or misspelt override is an error, never silently ignored.

The solves are two sections, ``forward`` (a solver) and ``backward`` (a backward method), given as the objects
:func:`lmdeq.deq_solve` takes (``forward=FixedPoint(...)``, ``backward=Implicit(solver=...)``) or their JSON dicts,
and stored as dicts (:mod:`lmdeq.models.solves`).

Original MDEQ (``lipschitz=False``, Bai et al. 2020, locuslab/deq experiments/cifar/cls_mdeq_LARGE.yaml and
cls_mdeq_TINY.yaml): Broyden forward and backward, relative tolerance 1e-3, 18/20 iterations (both presets),
the adjoint started at 0. Its recipe begins with an unrolled warm-up (``unrolled_warmup_steps``,
``unrolled_layers``): for the first PRETRAIN_STEPS optimiser steps f is applied NUM_LAYERS = 10 times from
z = 0 as an explicit network (training and evaluation alike), then the model switches to DEQ mode;
:func:`original_warmup_steps` scales the recipe's PRETRAIN_STEPS to another schedule length.

Lipschitz MDEQ (``lipschitz=True``, Sato & Iiduka, AISTATS 2026; the authors' released defaults):
s = 0.4, gamma_max = 1.0, alpha = 0.5, beta = 0.3, conv_cap = 2.0. Default solver: plain fixed-point
iteration, the cheapest per step, which the certified bound L < 1 guarantees to converge, capped at the a-priori
count for L (``max_iter=Apriori()``, :func:`lmdeq.solvers.apriori_iterations`); :data:`APRIORI_SOLVES` runs exactly
that count with no convergence checks (``exact=True``). The authors' solver as released is ``mdeq(..., **AUTHORS_SOLVER)``
(:class:`lmdeq.solvers.AuthorsAnderson`, adjoint from 0) and their constraint as released
``constraint='released'`` (see :data:`CONSTRAINTS`). ``cuda_graphs=True`` (default) replays each
exact-count solve (:data:`APRIORI_SOLVES`) as one CUDA graph on CUDA devices.

Certified settings of the Lipschitz variant beyond the paper's knobs: ``forward_budget`` / ``backward_budget`` = k
(default None): the forward solve (from 0) / the adjoint solve (from v) reaches its relative tol within k steps by
its a-priori count, because the caps of the cell's convolutions are scaled down, at init and after every optimiser
step, until the certified bound is at most L*(k), the largest bound whose count is <= k
(:mod:`lmdeq.models.budget`; ``lmdeq train --set forward_budget=4``). ``bound`` = 'layerwise' (default: every model
so far) or 'composed' (also the norms of the cell's linear compositions, :mod:`lmdeq.models.composed`: a tighter
certified bound). A config saved without these keys resolves to their defaults: the same model.

Jacobian regularisation (Bai, Koltun & Kolter, ICML 2021), training settings of either variant, named after the
released config keys (locuslab/deq and iiduka-researches/Lipschitz_mdeq MDEQ-Vision, ``LOSS.*`` and
``DEQ.RAND_F_THRES_DELTA``): on a training step drawn with probability ``jac_loss_freq`` the loss is
``CE + factor * jac_reg(f(z*), z*)`` (:func:`lmdeq.deq.jac_reg` with ``jac_loss_vecs`` vectors, on the tracked
f(z*) of the implicit backward) and that step's forward solve runs its ``max_iter + delta`` iterations, delta
uniform on {-rand_f_thres_delta, ..., 1}; ``factor = jac_loss_weight + 0.1 * (s // jac_incremental)`` at DEQ step
s (optimiser steps after the unrolled warm-up, during which it is 0), and 0 from ``jac_stop_fraction`` of the
run's steps on. Off unless ``jac_loss_weight > 0`` and ``jac_loss_freq > 0``. The model computes the estimate
when asked (``model(x, jac_loss=True)``); the per-step draw is the training loop's
(:mod:`lmdeq.app.train.jacobian`). :data:`RELEASED_JR` is the released recipe (cls_mdeq_LARGE_reg.yaml).
"""
from __future__ import annotations

import copy

from .. import checks
from ..deq import Implicit
from ..errors import ConfigError, ConfigTypeError
from ..solvers import Apriori, AuthorsAnderson, Broyden, FixedPoint
from .outer import state_resolution
from .solves import check_solves, solve_sections

__all__ = ["PRESETS", "PRESET_DATA", "describe_presets", "input_shape", "AUTHORS_SOLVER", "APRIORI_SOLVES", "CONSTRAINTS", "RELEASED_JR", "JR_KEYS", "ARCH_KEYS",
           "resolve_config", "original_warmup_steps", "jacobian_regularised", "BOUND_MODES"]

# The two CIFAR-10 architectures of the original MDEQ (locuslab/deq experiments/cifar: LARGE, and TINY = MDEQ-small)
# and of its ImageNet configs (experiments/imagenet cls_mdeq_SMALL.yaml / cls_mdeq_LARGE.yaml: a stem that halves
# 224 twice, DOWNSAMPLE_TIMES 2, four branches 56..7, Broyden 26/27).
_CIFAR_LARGE = dict(channels=[32, 64, 128, 256], expansion=5, num_groups=8, dropout=0.3,
                    head_channels=[14, 28, 56, 112], final_channels=1680, in_channels=3, image_size=32, downsample=0,
                    original_iters=(18, 20), original_warmup=(20000, 220 * 391))
_CIFAR_SMALL = dict(channels=[24, 24], expansion=5, num_groups=8, dropout=0.25, head_channels=[8, 16],
                    final_channels=200, in_channels=3, image_size=32, downsample=0, original_iters=(18, 20),
                    original_warmup=(3000, 50 * 391))
_IMAGENET = dict(expansion=5, num_groups=8, dropout=0.0, final_channels=2048, in_channels=3, image_size=224,
                 downsample=2, original_iters=(26, 27), original_warmup=(510000, 100 * 10010))
PRESETS = {
    "cifar10-large": dict(_CIFAR_LARGE, num_classes=10),
    "cifar10-small": dict(_CIFAR_SMALL, num_classes=10),
    "cifar100-large": dict(_CIFAR_LARGE, num_classes=100),
    "cifar100-small": dict(_CIFAR_SMALL, num_classes=100),
    "svhn-small": dict(_CIFAR_SMALL, num_classes=10),
    "mnist-small": dict(_CIFAR_SMALL, in_channels=1, image_size=28, num_classes=10),
    "fashion-mnist-small": dict(_CIFAR_SMALL, in_channels=1, image_size=28, num_classes=10),
    "tiny-imagenet-small": dict(_IMAGENET, channels=[32, 64, 128, 256], head_channels=[24, 48, 96, 192],
                                image_size=64, downsample=1, num_classes=200),
    "imagenet-small": dict(_IMAGENET, channels=[32, 64, 128, 256], head_channels=[24, 48, 96, 192],
                           num_classes=1000),
    "imagenet-large": dict(_IMAGENET, channels=[80, 160, 320, 640], head_channels=[32, 64, 128, 256],
                           num_classes=1000),
}
# original_warmup = (PRETRAIN_STEPS, schedule length in steps) of the locuslab recipe: LARGE 20,000 of
# 220 epochs x 391 steps (4 GPUs x 32 images), TINY (MDEQ-small) 3,000 of 50 epochs x 391 (2 GPUs x 64), ImageNet
# 510,000 of 100 epochs x 10,010 steps (128 images); the presets without a recipe of their own take the ratio of
# the recipe their architecture comes from.

# What each preset is for: the data set (a torchvision name) and its training defaults, normalisation
# x = (u / 255 - mean) / std per channel and augmentation (a random crop with zero padding ``crop_padding`` and
# a horizontal flip when ``flip``; ImageNet-style presets resize to image_size first).
_CIFAR10_NORM = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
_IMAGENET_NORM = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PRESET_DATA = {
    "cifar10-large": dict(dataset="CIFAR10", **_CIFAR10_NORM, crop_padding=4, flip=True),
    "cifar10-small": dict(dataset="CIFAR10", **_CIFAR10_NORM, crop_padding=4, flip=True),
    "cifar100-large": dict(dataset="CIFAR100", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                           crop_padding=4, flip=True),
    "cifar100-small": dict(dataset="CIFAR100", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                           crop_padding=4, flip=True),
    "svhn-small": dict(dataset="SVHN", mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                       crop_padding=2, flip=False),   # digits: a flip changes the class
    "mnist-small": dict(dataset="MNIST", mean=(0.1307,), std=(0.3081,), crop_padding=2, flip=False),
    "fashion-mnist-small": dict(dataset="FashionMNIST", mean=(0.2860,), std=(0.3530,), crop_padding=2, flip=True),
    "tiny-imagenet-small": dict(dataset="ImageFolder", **_IMAGENET_NORM, crop_padding=8, flip=True),
    "imagenet-small": dict(dataset="ImageNet", **_IMAGENET_NORM, crop_padding=0, flip=True),
    "imagenet-large": dict(dataset="ImageNet", **_IMAGENET_NORM, crop_padding=0, flip=True),
}
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
AUTHORS_SOLVER = dict(forward=AuthorsAnderson(max_iter=18, tol=1e-3, stop_mode="rel", m=6, lam=1e-4),
                      backward=Implicit(solver=AuthorsAnderson(max_iter=20, tol=1e-3, stop_mode="rel", m=6, lam=1e-4),
                                        x0="zeros"))
# The Lipschitz variant's solves at exactly their certified counts: no convergence check, no host sync.
APRIORI_SOLVES = dict(forward=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True),
                      backward=Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True)))

# Jacobian regularisation: the keys and their defaults (off). jac_incremental's default is the released
# JAC_INCREMENTAL default int(1e8) (the weight never grows); jac_loss_vecs = 2 is the released estimator's
# (locuslab/deq lib/jacobian.py jac_loss_estimate, vecs=2); rand_f_thres_delta is 0 here (the released default
# is 2, which RELEASED_JR sets) so that turning JR on does not change the solver unless asked.
JR_KEYS = dict(jac_loss_weight=0.0, jac_loss_freq=0.0, jac_incremental=100_000_000, jac_stop_fraction=1.0,
               rand_f_thres_delta=0, jac_loss_vecs=2)
# The released MDEQ + JR recipe the Lipschitz MDEQ paper compares with (iiduka-researches/Lipschitz_mdeq
# MDEQ-Vision experiments/cifar/cls_mdeq_LARGE_reg.yaml; locuslab/deq's file of that name differs: Broyden 8/7,
# JAC_LOSS_FREQ 0.02, weight 0.4, PRETRAIN_STEPS 16000): the original MDEQ with DROPOUT 0.22 and NUM_LAYERS 8 (PRETRAIN_STEPS 0:
# no unrolled warm-up), Anderson forward and backward (the locuslab solver: m = 6, lam = 1e-4, eps 1e-3, the
# adjoint from 0) with STOP_MODE rel, F_THRES 7, B_THRES 8, RAND_F_THRES_DELTA 2; JAC_LOSS_WEIGHT 0.5,
# JAC_LOSS_FREQ 0.05, JAC_INCREMENTAL not set (1e8), JAC_STOP_EPOCH 90 of END_EPOCH 200.
RELEASED_JR = dict(dropout=0.22, unrolled_layers=8, unrolled_warmup_steps=0,
                   forward=AuthorsAnderson(max_iter=7, tol=1e-3, stop_mode="rel", m=6, lam=1e-4),
                   backward=Implicit(solver=AuthorsAnderson(max_iter=8, tol=1e-3, stop_mode="rel", m=6, lam=1e-4),
                                     x0="zeros"),
                   jac_loss_weight=0.5, jac_loss_freq=0.05, jac_incremental=100_000_000, jac_stop_fraction=90 / 200,
                   rand_f_thres_delta=2, jac_loss_vecs=2)

# The architecture a preset fixes (a checkpoint trained with --set on them keeps its own, see lmdeq bench --weights).
ARCH_KEYS = ("channels", "expansion", "num_groups", "dropout", "head_channels", "final_channels", "in_channels",
             "image_size", "downsample")
_COMMON_DEFAULTS = dict(num_classes=10, weight_norm=True, cuda_graphs=True, unrolled_warmup_steps=0,
                        unrolled_layers=UNROLLED_LAYERS, **JR_KEYS)
_LIPSCHITZ_DEFAULTS = dict(s=0.4, gamma_max=1.0, alpha=0.5, beta=0.3, conv_cap=2.0, constraint="certified",
                           sigma_margin=0.05, power_iters=2, init_power_iters=30, forward_budget=None,
                           backward_budget=None, bound="layerwise")
# How the certified bound is computed (lmdeq.models.composed): 'layerwise' composes per-layer bounds (the default
# of every model so far, so a config without the key keeps its behaviour); 'composed' also estimates the norms of
# the linear compositions inside f (conv with GroupNorm, the multiscale fusion) and takes the smaller bound.
BOUND_MODES = ("layerwise", "composed")
# The Lipschitz variant's solves: Picard iteration to rel tol 1e-3, capped at the certified a-priori count.
_LIPSCHITZ_SOLVES = dict(forward=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel"),
                         backward=Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel")))
_LIPSCHITZ_ONLY = ("s", "gamma_max", "alpha", "beta", "conv_cap", "constraint", "sigma_margin", "power_iters",
                   "init_power_iters", "forward_budget", "backward_budget", "bound")


def _defaults(preset: str, lipschitz: bool) -> dict:
    spec = PRESETS[preset]
    cfg = {"preset": preset, "lipschitz": lipschitz}
    cfg.update({k: copy.deepcopy(spec[k]) for k in ARCH_KEYS})
    cfg.update(copy.deepcopy(_COMMON_DEFAULTS))
    cfg["num_classes"] = spec["num_classes"]
    if lipschitz:
        cfg.update(_LIPSCHITZ_DEFAULTS)
        cfg.update(solve_sections(**_LIPSCHITZ_SOLVES))
    else:
        f_iter, b_iter = spec["original_iters"]
        cfg.update(solve_sections(Broyden(max_iter=f_iter, tol=1e-3, stop_mode="rel"),
                                  Implicit(solver=Broyden(max_iter=b_iter, tol=1e-3, stop_mode="rel"), x0="zeros")))
    return cfg


def input_shape(cfg: dict) -> tuple:
    """(C, H, W) of the images a config (or a preset's entry of :data:`PRESETS`) takes."""
    return (cfg["in_channels"], cfg["image_size"], cfg["image_size"])


def describe_presets() -> list:
    """One line per preset: name, input, classes, branches, the data it is for."""
    lines = []
    for name, spec in PRESETS.items():
        data = PRESET_DATA[name]
        lines.append(f"{name:<20} {spec['in_channels']}x{spec['image_size']}x{spec['image_size']} input, "
                     f"{spec['num_classes']} classes, {len(spec['channels'])} branches {spec['channels']}"
                     + (f", stem /{2 ** spec['downsample']}" if spec["downsample"] else "") + f"; {data['dataset']}")
    return lines


def _check_preset(preset) -> None:
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")


def original_warmup_steps(preset: str, total_steps: int) -> int:
    """The original recipe's unrolled warm-up scaled to a schedule of ``total_steps`` optimiser steps:
    round(total_steps * PRETRAIN_STEPS / recipe length), e.g. 3,000 of 19,550 steps for MDEQ-small."""
    _check_preset(preset)
    total_steps = checks.integer("total_steps", total_steps, 1)
    pretrain, length = PRESETS[preset]["original_warmup"]
    return round(total_steps * pretrain / length)


def jacobian_regularised(cfg: dict) -> bool:
    """Whether a model config trains with Jacobian regularisation (jac_loss_weight > 0 and jac_loss_freq > 0)."""
    return cfg.get("jac_loss_weight", 0.0) > 0 and cfg.get("jac_loss_freq", 0.0) > 0


def resolve_config(preset: str, lipschitz: bool = True, **overrides) -> dict:
    """The full config for ``preset`` and variant with ``overrides`` applied, validated."""
    _check_preset(preset)
    checks.boolean("lipschitz", lipschitz)
    overrides = dict(overrides)
    cfg = _defaults(preset, lipschitz)
    if not lipschitz:
        misplaced = sorted(k for k in overrides if k in _LIPSCHITZ_ONLY)
        if misplaced:
            raise ConfigError(f"{misplaced} only apply to the Lipschitz variant (lipschitz=True)")
    unknown = sorted(k for k in overrides if k not in cfg)
    if unknown:
        raise ConfigTypeError(f"unknown mdeq override(s) {unknown}; valid keys: {sorted(cfg)}")
    solves = {k: overrides.pop(k) for k in ("forward", "backward") if k in overrides}
    cfg.update(copy.deepcopy(overrides))
    if solves:
        cfg.update(solve_sections(solves.get("forward", cfg["forward"]), solves.get("backward", cfg["backward"])))
    _validate(cfg)
    return cfg


# -- validation ----------------------------------------------------------------------------------------
def _int_list(cfg, key, length=None):
    v = cfg[key]
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigTypeError(f"{key} must be a non-empty list of positive ints, got {v!r}")
    for i, c in enumerate(v):
        checks.integer(f"{key}[{i}]", c, 1)
    if length is not None and len(v) != length:
        raise ConfigError(f"{key} must have one entry per branch ({length}), got {len(v)}")
    cfg[key] = list(v)


def _validate(cfg: dict) -> None:
    _int_list(cfg, "channels")
    n = len(cfg["channels"])
    if not 2 <= n <= 5:
        raise ConfigError(f"channels must list 2 to 5 branches (the resolution halves per branch), got {n}")
    _int_list(cfg, "head_channels", length=n)
    for key in ("expansion", "num_groups", "final_channels", "num_classes", "in_channels", "image_size"):
        checks.integer(key, cfg[key], 1)
    checks.choice("downsample", cfg["downsample"], (0, 1, 2))
    state_resolution(cfg["image_size"], cfg["downsample"], n)
    groups = cfg["num_groups"]
    for c in cfg["channels"]:
        if c % groups or (c * cfg["expansion"]) % groups or c % max(1, groups // 2):
            raise ConfigError(f"channels ({c}), channels * expansion and channels after fusion must be "
                              f"divisible by num_groups ({groups}) and num_groups // 2")
    checks.number("dropout", cfg["dropout"], 0, 1, high_open=True)
    for key in ("weight_norm", "cuda_graphs"):
        checks.boolean(key, cfg[key])
    checks.integer("unrolled_warmup_steps", cfg["unrolled_warmup_steps"], 0)
    checks.integer("unrolled_layers", cfg["unrolled_layers"], 1)
    if cfg["lipschitz"]:
        checks.choice("constraint", cfg["constraint"], CONSTRAINTS)
        _validate_bound_settings(cfg)
    _validate_solves(cfg)
    _validate_jacobian(cfg)
    if cfg["lipschitz"]:
        for key in ("s", "gamma_max", "conv_cap"):
            checks.number(key, cfg[key], 0, low_open=True)
        checks.number("alpha", cfg["alpha"], 0, 1)
        checks.number("beta", cfg["beta"], 0, 1)
        checks.number("sigma_margin", cfg["sigma_margin"], 0)
        checks.integer("power_iters", cfg["power_iters"], 1)
        checks.integer("init_power_iters", cfg["init_power_iters"], 1)


def _validate_bound_settings(cfg: dict) -> None:
    """bound and the iteration budgets (their feasibility against the solves: check_solves)."""
    checks.choice("bound", cfg["bound"], BOUND_MODES)
    if cfg["bound"] == "composed" and cfg["constraint"] != "certified":
        raise ConfigError(f"bound='composed' tightens the certified bound, but constraint={cfg['constraint']!r} "
                          "certifies none: use constraint='certified' or bound='layerwise'")
    for key in ("forward_budget", "backward_budget"):
        if cfg[key] is not None:
            cfg[key] = checks.integer(key, cfg[key], 1)


def _validate_solves(cfg: dict) -> None:
    for key in ("forward", "backward"):
        if not isinstance(cfg[key], dict):
            raise ConfigTypeError(f"{key} must be a solve config dict (or the object), got {type(cfg[key]).__name__}")
    cfg.update(solve_sections(cfg["forward"], cfg["backward"]))   # validated (and completed) by the objects
    check_solves(cfg)


def _validate_jacobian(cfg: dict) -> None:
    checks.number("jac_loss_weight", cfg["jac_loss_weight"], 0)
    checks.number("jac_loss_freq", cfg["jac_loss_freq"], 0, 1)
    checks.integer("jac_incremental", cfg["jac_incremental"], 1)
    checks.number("jac_stop_fraction", cfg["jac_stop_fraction"], 0, 1)
    delta = checks.integer("rand_f_thres_delta", cfg["rand_f_thres_delta"], 0)
    checks.integer("jac_loss_vecs", cfg["jac_loss_vecs"], 1)
    if delta and jacobian_regularised(cfg):
        forward = cfg["forward"]
        if isinstance(forward["max_iter"], dict) or forward["exact"]:
            raise ConfigError("rand_f_thres_delta changes the forward solve's max_iter on the JR steps: it needs a "
                              "forward solver with an int max_iter and exact=False (or rand_f_thres_delta=0)")
        if forward["max_iter"] - delta < 1:
            raise ConfigError(f"rand_f_thres_delta={delta} would leave the forward max_iter={forward['max_iter']} - "
                              f"{delta} < 1 iterations on some JR steps")
