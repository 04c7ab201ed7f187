"""Optimiser and learning-rate schedule.

Adam with the configured lr and weight decay, and a per-step cosine decay over the whole run:
``lr(t) = min_lr + (lr - min_lr) * (1 + cos(pi * min(t, T) / T)) / 2`` with T = total optimiser steps.
The schedule is closed-form in t, so restoring the step count (scheduler state) restores it exactly.
"""
from __future__ import annotations

import math

import torch

from .config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float) -> float:
    t = min(step, total_steps) / total_steps
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig):
    """LambdaLR stepping once per optimiser step along :func:`cosine_lr`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_lr(step, total_steps, cfg.lr, cfg.min_lr) / cfg.lr)
