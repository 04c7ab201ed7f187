"""One optimiser step of classifier training: the body shared by :class:`~lmdeq.app.train.trainer.Trainer` and
the time-to-accuracy benchmark (``lmdeq.app.bench.tta_run``), so both train exactly alike.

    x = normalize(images);  logits = model(x);  loss = CE(logits, labels)
    (a non-finite loss raises before any parameter moves)
    zero_grad; loss.backward(); optional global grad-norm clipping; optimizer.step(); scheduler.step();
    model.constraint_step() (when the model has one)

Jacobian regularisation (``jacobian``, the step's :class:`~lmdeq.app.train.jacobian.JacobianDraw`): on a drawn
step the model is called as ``model(x, jac_loss=True[, max_iter=...])``, returning (logits, jr), and the
step trains on ``loss + factor * jr`` (the released ``(loss + factor * jac_loss).backward()``); the other
steps are the plain step above.

Mixed precision (``amp='bf16'``): the forward pass (``model(x)``, the solves and the JR estimate included) runs
under ``torch.autocast(device, bfloat16)``, CPU and CUDA alike; the loss is taken on fp32 logits, and the
backward pass (whose implicit adjoint solve re-enters the forward pass's autocast state, :mod:`lmdeq.deq.adjoint`),
the optimiser step and the constraint upkeep (``constraint_step``: power iterations, gamma clip) run outside
autocast, in the parameters' fp32. The certified bound is computed by the trainer outside this function, also
outside autocast (and :func:`lmdeq.ops.conv_power_iteration` turns autocast off itself). bf16 needs no loss
scaling. ``amp='off'``: no autocast.

Data-parallel (``dist`` with more than one rank, ``forward`` the DistributedDataParallel wrapper): each
rank gets its shard of the global batch of N images, n_r of them. The ranks sum (loss_r n_r, hits_r, n_r)
before the backward pass, so every rank knows the global batch's mean loss (and all of them raise
together when it is not finite). Rank r backpropagates c_r loss_r with c_r = n_r W / N; DDP averages the
W ranks' gradients, which gives sum_r (n_r / N) grad(loss_r) = grad of the global batch's mean loss: the
gradient a single process computes on the whole batch, whatever the shard sizes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import NonFiniteError
from ..data.augment import DataDefaults, normalize
from .evaluate import check_logits
from .distributed import Dist
from .hooks import apply_constraint
from .jacobian import JacobianDraw

__all__ = ["StepResult", "train_step", "forward_precision"]


def forward_precision(device: torch.device, amp: str):
    """The context of a training forward pass: bf16 autocast on ``device``'s type for ``amp='bf16'``, nothing
    for 'off' (:data:`lmdeq.app.train.config.AMP_MODES`)."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp != "off":
        raise ValueError(f"amp must be 'off' or 'bf16', got {amp!r}")
    return contextlib.nullcontext()


@dataclass(frozen=True)
class StepResult:
    loss: float              # the batch's mean cross-entropy before the step
    correct: int             # top-1 hits of the batch (logits before the step)
    batch: int               # images in the batch (the global batch, in a data-parallel step)
    shard: int = 0           # of which this rank trained on this many (= batch in a single process)
    jac_loss: float | None = None   # the JR estimate of a JR step (global batch mean), None on other steps


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, images: torch.Tensor,
               labels: torch.Tensor, device: torch.device, num_classes: int, grad_clip: float = 0.0,
               nonfinite_error: Callable[[float], Exception] | None = None,
               memory_format: torch.memory_format = torch.contiguous_format,
               forward: torch.nn.Module | None = None, dist: Dist | None = None,
               jacobian: JacobianDraw | None = None, stats: DataDefaults = DataDefaults(),
               amp: str = "off") -> StepResult:
    """Train ``model`` on one batch of uint8 ``images`` (B, 3, H, W) and ``labels`` (B,).

    ``nonfinite_error(loss)`` builds the exception raised for a NaN/Inf loss (default: NonFiniteError);
    ``memory_format`` is the layout the normalised batch is given to the model in (channels_last for a
    channels_last model). ``forward``: the module that runs the forward pass (default ``model``; the
    DistributedDataParallel wrapper of ``model`` in a data-parallel step, with ``dist`` and this rank's
    shard as ``images``/``labels``: see the module docstring). ``jacobian``: the step's Jacobian-
    regularisation draw (see the module docstring; None: no JR). ``stats``: the normalisation statistics (the
    preset's, :func:`lmdeq.app.data.augment.preset_defaults`). ``amp``: 'bf16' runs the forward pass under bf16
    autocast (see the module docstring)."""
    x = normalize(images.to(device, non_blocking=True), stats.mean, stats.std).contiguous(memory_format=memory_format)
    y = labels.to(device, non_blocking=True)
    call = jacobian.model_kwargs() if jacobian is not None else {}
    with forward_precision(x.device, amp):
        out = (model if forward is None else forward)(x, **call)
    logits, jr = out if call else (out, None)
    n = int(y.shape[0])
    check_logits(logits, n, num_classes)
    loss = F.cross_entropy(logits.float(), y)
    parallel = dist is not None and dist.enabled
    jr_value = None
    if parallel:
        hits = (logits.detach().argmax(dim=1) == y).sum()
        parts = [loss.detach().double() * n, hits.double(),
                 torch.tensor(float(n), dtype=torch.float64, device=loss.device)]
        if jr is not None:
            parts.append(jr.detach().double() * n)
        sums = dist.all_sum(torch.stack(parts)).tolist()
        loss_sum, correct, total = sums[:3]
        loss_value, correct, total = loss_sum / total, int(correct), int(total)
        if jr is not None:
            jr_value = sums[3] / total
    else:
        loss_value = loss.item()
        if jr is not None:
            jr_value = jr.item()
    value = loss_value if jr is None else loss_value + jacobian.factor * jr_value
    if not math.isfinite(value):
        raise (nonfinite_error(value) if nonfinite_error is not None
               else NonFiniteError(f"the training loss is {value}"))
    if jr is not None:
        loss = loss + jacobian.factor * jr
    optimizer.zero_grad(set_to_none=True)
    (loss * (n * dist.world / total) if parallel else loss).backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    apply_constraint(model)
    if parallel:
        return StepResult(loss_value, correct, total, n, jr_value)
    correct = int((logits.detach().argmax(dim=1) == y).sum().item())
    return StepResult(loss_value, correct, n, n, jr_value)
