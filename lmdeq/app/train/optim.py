"""Optimiser and learning-rate schedule.

Adam with the configured lr and weight decay, and a per-step cosine decay over each cycle of the run:
``lr(t) = min_lr + (lr - min_lr) * (1 + cos(pi * (t - a) / (b - a))) / 2`` for step t of the cycle [a, b).
A run has one cycle, [0, T) with T = epochs * steps per epoch, unless it was extended: ``lr_restarts``
(epoch counts) split it into cycles at those epochs. Past the last cycle's end the lr stays at min_lr.
The schedule is closed-form in t, so restoring the step count (scheduler state) restores it exactly.
"""
from __future__ import annotations

import bisect
import math

import torch

from ...errors import ConfigError
from .config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float) -> float:
    t = min(step, total_steps) / total_steps
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def cycle_bounds(cfg: TrainConfig, steps_per_epoch: int) -> list[int]:
    """Step boundaries [0, r_1, ..., T] of the cosine cycles (r_i = lr_restarts[i] * steps_per_epoch)."""
    return [0] + [e * steps_per_epoch for e in cfg.lr_restarts] + [cfg.epochs * steps_per_epoch]


def scheduled_lr(step: int, bounds: list[int], lr: float, min_lr: float) -> float:
    """The lr of optimiser step ``step`` (0-based) under the cycles ``bounds``."""
    k = min(bisect.bisect_right(bounds, step), len(bounds) - 1)  # cycle [bounds[k-1], bounds[k])
    a, b = bounds[k - 1], bounds[k]
    return cosine_lr(step - a, b - a, lr, min_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """LambdaLR stepping once per optimiser step along :func:`scheduled_lr`."""
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
    bounds = cycle_bounds(cfg, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: scheduled_lr(step, bounds, cfg.lr, cfg.min_lr) / cfg.lr)
