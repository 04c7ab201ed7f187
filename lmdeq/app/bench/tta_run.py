"""Interleaved training for the time-to-accuracy benchmark (``lmdeq bench tta``).

All methods train in one process, round by round: every method trains one evaluation interval (a fixed
share of an epoch) and is evaluated, then the next method does the same, so load drift on a shared
machine hits every method alike instead of turning into ratios between sequential blocks.

Each method owns everything that decides its numbers, so its results do not depend on the interleaving
(``tests/bench/test_time_to_accuracy.py`` checks that interleaved == alone, bitwise on CPU):

* its model, built as ``lmdeq train`` builds it (``mdeq(**config)`` after ``seed_everything(seed)``)
  and then given the shared initial parameters (:func:`shared_init`), so every method starts from the
  same weights (the original and the Lipschitz cells have the same parameters; only the RNG draws of
  their construction differ);
* its optimiser and lr schedule (``lmdeq.app.train.optim`` from the one shared TrainConfig);
* its RNG state (torch CPU/CUDA, numpy, python), restored before and captured after each of its
  intervals (dropout masks, the released cap's vectors and the JR estimate's vectors draw from it), and for a
  Jacobian-regularised method (a-JR) its own decision generator (:class:`lmdeq.app.train.jacobian.JacobianSchedule`,
  seeded by the run's seed, stop step at ``jac_stop_fraction`` of the schedule);
* its data order: the epoch plans of :mod:`lmdeq.app.data.batches`, a function of (data, seed, epoch)
  only, hence the same batches for every method;
* its clock: seconds spent training (the device synchronised before each reading), evaluation excluded.

A run can be stopped between rounds and continued later (``lmdeq bench tta --resume``): each method's
:meth:`MethodRun.state_dict` holds all of the above (weights, optimiser and schedule, RNG streams, the JR
decisions' generator, its position in the epoch, its clock and curve), and a restored method draws the same
batches (the epoch plan, from its position on) and random numbers as an uninterrupted one, so its curve is the
same point for point; only the measured seconds of the intervals after the break come from another sitting.

The step itself is :func:`lmdeq.app.train.step.train_step`, the Trainer's step, and the evaluation
:func:`lmdeq.app.train.evaluate.evaluate`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ... import checks
from ...errors import NonFiniteError
from ..data.batches import train_batches
from ..train.checkpoint import capture_rng_state, restore_rng_state, seed_everything
from ..flat_solves import model_arguments
from ..data.augment import preset_defaults
from ..train.config import TrainConfig
from ..train.evaluate import evaluate
from ..train.jacobian import JacobianSchedule
from ..train.hooks import certified_bound, solver_stats
from ..data.images import LabelledImages
from ..train.metrics import MeanMeter
from ..train.optim import build_optimizer, build_scheduler
from ..train.step import train_step
from .device import sync

__all__ = ["MethodSpec", "MethodRun", "interval_bounds", "run_interleaved", "shared_init"]


@dataclass(frozen=True)
class MethodSpec:
    name: str                # e.g. 'lmdeq'
    label: str               # e.g. '(c) lmdeq fast path'
    model_config: dict       # keyword arguments of lmdeq.models.mdeq
    channels_last: bool = False


def interval_bounds(steps_per_epoch: int, evals_per_epoch: int) -> List[int]:
    """Steps into an epoch after which a method is evaluated: ``evals_per_epoch`` near-equal intervals,
    the last one ending the epoch (fewer when an epoch has fewer steps)."""
    steps_per_epoch = checks.integer("steps_per_epoch", steps_per_epoch, 1)
    evals_per_epoch = checks.integer("evals_per_epoch", evals_per_epoch, 1)
    return sorted({max(1, round(k * steps_per_epoch / evals_per_epoch)) for k in range(1, evals_per_epoch + 1)})


def shared_init(preset: str, seed: int, overrides: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """The initial parameters every method starts from: those of ``mdeq(preset, constraint='none', ...)``
    built after ``seed_everything(seed)`` (the Lipschitz architecture without norm estimates, whose
    construction draws nothing but the weights)."""
    from ...models import mdeq

    seed_everything(seed)
    model = mdeq(preset, lipschitz=True, constraint="none",
                 **model_arguments(preset, True, {"f_max_iter": 1, "b_max_iter": 1, **(overrides or {})}))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


class MethodRun:
    """One method's training state, clock and curve (``points``). ``init``: parameters to start from
    (:func:`shared_init`; every parameter of the model must be there), else the model's own init."""

    def __init__(self, spec: MethodSpec, cfg: TrainConfig, train: LabelledImages, val: LabelledImages,
                 device: torch.device, init: Optional[Dict[str, torch.Tensor]] = None):
        from ...models import mdeq

        self.spec, self.cfg, self.train, self.val, self.device = spec, cfg, train, val, device
        self.steps_per_epoch = -(-len(train) // cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        seed_everything(cfg.seed)
        model = mdeq(**spec.model_config)
        self.data_defaults = preset_defaults(model.config["preset"])
        if init is not None:
            own = dict(model.named_parameters())
            if set(own) != set(init) or any(own[k].shape != v.shape for k, v in init.items()):
                raise ValueError(f"{spec.name}: the shared initial parameters do not fit its model")
            with torch.no_grad():
                for name, value in init.items():
                    own[name].copy_(value)   # (a certified model re-estimates its conv norms at the next forward)
        model = model.to(device)
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.rng = capture_rng_state()
        self.jacobian = JacobianSchedule.for_model(self.model, cfg.seed, self.total_steps)
        self.jr_steps = 0       # optimiser steps that trained on the JR estimate
        self.step = 0           # completed optimiser steps
        self.epoch = 0          # completed epochs
        self.in_epoch = 0       # steps done in the current epoch
        self.clock = 0.0        # training seconds
        self.points: List[Dict] = []
        self.stopped = False    # out of time budget or schedule
        self._batches = None
        self._skip = 0          # batches of the current epoch done before a restore (skipped when it resumes)

    @property
    def finished(self) -> bool:
        return self.stopped or self.step >= self.total_steps

    def _unrolled(self) -> bool:
        probe = getattr(self.model, "in_unrolled_warmup", None)
        return bool(probe()) if callable(probe) else False

    def train_until(self, in_epoch: int) -> Dict:
        """Train until ``in_epoch`` steps of the current epoch are done; returns the interval's means
        (loss, acc, f_nstep, b_nstep, ...), its seconds, steps and whether it ran the unrolled warm-up."""
        if not self.in_epoch < in_epoch <= self.steps_per_epoch:
            raise ValueError(f"in_epoch must be in ({self.in_epoch}, {self.steps_per_epoch}], got {in_epoch}")
        restore_rng_state(self.rng)
        self.model.train()
        unrolled = self._unrolled()
        meter = MeanMeter()
        steps = 0
        sync(self.device)
        start = time.perf_counter()
        while self.in_epoch < in_epoch:
            if self._batches is None:
                d = self.data_defaults
                self._batches = iter(train_batches(self.train, self.cfg.batch_size, self.cfg.seed, self.epoch + 1,
                                                   self.cfg.augment, d.padding, pin_memory=self.device.type == "cuda",
                                                   flip=d.flip))
                for _ in range(self._skip):     # restored mid-epoch: the plan's batches already trained on
                    next(self._batches)
                self._skip = 0
            images, labels = next(self._batches)
            draw = self.jacobian.draw(self.step) if self.jacobian is not None else None
            done = train_step(self.model, self.optimizer, self.scheduler, images, labels, self.device,
                              len(self.train.classes), self.cfg.grad_clip,
                              lambda v: NonFiniteError(f"{self.spec.label}: loss is {v} at step {self.step + 1}"),
                              memory_format=self.memory_format, jacobian=draw, stats=self.data_defaults)
            self.jr_steps += bool(draw is not None and draw.jac_loss)
            self.step += 1
            self.in_epoch += 1
            steps += 1
            meter.update({"loss": done.loss, "acc": done.correct / done.batch, **solver_stats(self.model)},
                         weight=done.batch)
        sync(self.device)
        seconds = time.perf_counter() - start
        self.clock += seconds
        if self.in_epoch == self.steps_per_epoch:
            self.epoch += 1
            self.in_epoch = 0
            self._batches = None
        self.rng = capture_rng_state()
        return {**meter.means(), "seconds": seconds, "steps": steps, "unrolled": unrolled}

    _COUNTERS = ("jr_steps", "step", "epoch", "in_epoch", "clock", "stopped")

    def state_dict(self) -> Dict:
        """Everything that decides this method's further results (see the module docstring)."""
        return {"name": self.spec.name, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng,
                "jacobian": self.jacobian.state() if self.jacobian is not None else None,
                "points": [dict(p) for p in self.points], **{k: getattr(self, k) for k in self._COUNTERS}}

    def load_state_dict(self, state: Dict) -> None:
        """Continue from :meth:`state_dict` of the same method (ValueError naming what does not fit)."""
        if state.get("name") != self.spec.name:
            raise ValueError(f"saved state of method {state.get('name')!r} cannot continue {self.spec.name!r}")
        if (state["jacobian"] is None) != (self.jacobian is None):
            raise ValueError(f"{self.spec.name}: the saved state and the method disagree on Jacobian regularisation")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.jacobian is not None:
            self.jacobian.set_state(state["jacobian"])
        self.rng = state["rng"]
        self.points = [dict(p) for p in state["points"]]
        for k in self._COUNTERS:
            setattr(self, k, state[k])
        self._batches, self._skip = None, self.in_epoch

    def evaluate_point(self, interval: Dict) -> Dict:
        """Validate now (not on the clock) and append the curve point."""
        restore_rng_state(self.rng)
        val = evaluate(self.model, self.val, self.cfg.eval_batch_size, self.device, stats=self.data_defaults)
        self.rng = capture_rng_state()
        bound = certified_bound(self.model, training=False)
        point = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "train_s": self.clock,
                 "val_acc": val["acc"], "val_loss": val["loss"], "eval_s": val["time_s"],
                 "val_f_nstep": val.get("f_nstep"), "train_loss": interval.get("loss"),
                 "train_acc": interval.get("acc"), "f_nstep": interval.get("f_nstep"),
                 "b_nstep": interval.get("b_nstep"), "interval_steps": interval["steps"],
                 "interval_s": interval["seconds"], "unrolled": interval["unrolled"],
                 "lr": self.optimizer.param_groups[0]["lr"], "jr_steps": self.jr_steps,
                 "lipschitz_bound": bound if bound is not None and bound < float("inf") else None}
        self.points.append(point)
        return point


def run_interleaved(runs: List[MethodRun], evals_per_epoch: int, budget_s: Optional[float] = None,
                    on_point: Optional[Callable[[MethodRun, Dict], None]] = None,
                    on_round: Optional[Callable[[int, int], None]] = None) -> None:
    """Train every run to the end of its schedule (or its ``budget_s`` of training seconds), one
    evaluation interval per method per round, in the order given."""
    if not runs:
        raise ValueError("runs must hold at least one method")
    spe = {r.steps_per_epoch for r in runs}
    epochs = {r.cfg.epochs for r in runs}
    if len(spe) != 1 or len(epochs) != 1:
        raise ValueError("every method must share the data, batch size and number of epochs")
    bounds = interval_bounds(spe.pop(), evals_per_epoch)
    total_rounds = epochs.pop() * len(bounds)
    rnd = max(len(r.points) for r in runs)   # rounds already done (a restored run continues its count)
    while not all(r.finished for r in runs):
        rnd += 1
        for run in runs:
            if run.finished:
                continue
            target = next(b for b in bounds if b > run.in_epoch)
            point = run.evaluate_point(run.train_until(target))
            if budget_s is not None and run.clock >= budget_s:
                run.stopped = True
            if on_point is not None:
                on_point(run, point)
        if on_round is not None:
            on_round(rnd, total_rounds)
