"""One optimiser step of classifier training: the body shared by :class:`~lmdeq.train.trainer.Trainer` and
the time-to-accuracy benchmark (``lmdeq.bench.tta_run``), so both train exactly alike.

    x = normalize(images);  logits = model(x);  loss = CE(logits, labels)
    (a non-finite loss raises before any parameter moves)
    zero_grad; loss.backward(); optional global grad-norm clipping; optimizer.step(); scheduler.step();
    model.constraint_step() (when the model has one)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import NonFiniteError
from .augment import normalize
from .evaluate import check_logits
from .hooks import apply_constraint

__all__ = ["StepResult", "train_step"]


@dataclass(frozen=True)
class StepResult:
    loss: float              # the batch's mean cross-entropy before the step
    correct: int             # top-1 hits of the batch (logits before the step)
    batch: int               # images in the batch


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, images: torch.Tensor,
               labels: torch.Tensor, device: torch.device, num_classes: int, grad_clip: float = 0.0,
               nonfinite_error: Callable[[float], Exception] | None = None,
               memory_format: torch.memory_format = torch.contiguous_format) -> StepResult:
    """Train ``model`` on one batch of uint8 ``images`` (B, 3, H, W) and ``labels`` (B,).

    ``nonfinite_error(loss)`` builds the exception raised for a NaN/Inf loss (default: NonFiniteError);
    ``memory_format`` is the layout the normalised batch is given to the model in (channels_last for a
    channels_last model)."""
    x = normalize(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
    y = labels.to(device, non_blocking=True)
    logits = model(x)
    check_logits(logits, y.shape[0], num_classes)
    loss = F.cross_entropy(logits.float(), y)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise (nonfinite_error(loss_value) if nonfinite_error is not None
               else NonFiniteError(f"the training loss is {loss_value}"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    apply_constraint(model)
    correct = int((logits.detach().argmax(dim=1) == y).sum().item())
    return StepResult(loss_value, correct, int(y.shape[0]))
