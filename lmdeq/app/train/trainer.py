"""The training loop: one optimiser step per batch, the Lipschitz constraint after every step,
validation, and one atomic commit of the run state after every epoch.

Step t (0-based, global), :func:`lmdeq.app.train.step.train_step`: logits = model(normalize(batch_t));
loss = CE(logits, y); backward; optional global grad-norm clipping; Adam step with lr = scheduled_lr(t);
scheduler step; ``model.constraint_step()``. After epoch e (1-based): evaluate on the validation images, append the
epoch's record to the run's history, and commit (:func:`lmdeq.app.train.rundir.commit_epoch`): ``last.pt``
holding the whole state, history and best weights, then the derived ``best.pt`` and ``metrics.jsonl``.
Resuming from ``last.pt`` reproduces the uninterrupted run bit for bit on the same device, files
included (batches are a function of (seed, epoch); every other state is in the checkpoint).

Step checkpoints (``checkpoint_every`` = N > 0): after every N-th optimiser step that is not the last of its
epoch, ``last.pt`` is also committed mid-epoch (:func:`lmdeq.app.train.rundir.commit_step`: the same atomic
write), holding besides the run state the epoch's progress (``epoch_progress``: batches done, the running means
of its record so far, its elapsed training time). A run resumed from it skips those batches of the epoch's plan
(the batches are a function of (seed, epoch)) and continues the means, so it ends exactly as an uninterrupted
run; ``epoch`` stays the count of completed epochs and ``step`` the optimiser steps done. A checkpoint without
``epoch_progress`` (or with None) is at an epoch end.

Mixed precision: ``cfg.amp = 'bf16'`` runs the training forward passes under bf16 autocast
(:mod:`lmdeq.app.train.step`); the certified bounds, the validation and everything between steps run in fp32.

Logs (``log``: :mod:`lmdeq.app.train.loggers`, rank 0): every step's values and every epoch's record go to the
chosen loggers, which are made durable before each commit and cut back to the resumed step when a run resumes.
``run_config`` (the resolved flags, :mod:`lmdeq.app.train.config_file`) is written as ``config.json`` after the
first commit of each :meth:`fit` (a run directory holds it once it holds a run).

Jacobian regularisation (a model config with ``jac_loss_weight`` and ``jac_loss_freq`` > 0): before each step
the run's :class:`~lmdeq.app.train.jacobian.JacobianSchedule` draws whether the step trains on the JR estimate (and
its forward-solve cap), as the released MDEQ + JR loop does, from a generator of its own seeded by the run's seed
and saved in ``last.pt``'s RNG state, so a resumed run makes the same decisions; the schedule's stop step is
``jac_stop_fraction`` of the run's ``epochs``. The epoch record then also holds ``jr_steps`` (how many steps
trained on it) and ``jac_loss`` (its mean over them).

Solves that miss their tolerance are counted per epoch (``unconverged_steps``: the fraction of training
steps that ran on one, in metrics.jsonl) and warned about at every epoch end where it is not zero.

Data-parallel (``dist`` with W > 1 ranks, under torchrun): the global batch stays ``cfg.batch_size``;
every rank trains on its shard of each global batch (:mod:`lmdeq.app.data.batches`) through
DistributedDataParallel, and a W-process run follows the single-process run's trajectory (equal up to
rounding where the model's forward pass treats samples independently: BatchNorm in evaluation mode or
synchronised, no dropout, solves of a fixed iteration count). The progress bar and metrics.jsonl show
the loss, accuracy and solver statistics of the whole global batch (summed over the ranks); validation
runs on a shard per rank and sums the counts. Only rank 0 takes the run directory's lock, commits and
prints; every rank keeps the same run state (:mod:`lmdeq.app.train.replicas`). The RNG of rank r > 0
(dropout masks of its shard) is seeded from (seed, rank, epoch) at each epoch start and from (seed, rank, step) at
each step checkpoint, where every rank also takes rank 0's buffers (as at an epoch end), so a resume restores every
rank exactly; rank 0's RNG is the one saved in ``last.pt``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from itertools import islice
from pathlib import Path
from typing import Callable

import torch

from ... import checks
from ...errors import CheckpointError, ConfigError, DataError, NonFiniteError, first_line
from . import replicas
from ..data.augment import preset_defaults
from ..data.batches import check_shardable, train_batches
from .checkpoint import capture_rng_state, restore_generators, restore_rng_state
from .config import TrainConfig
from .config_file import write_resolved_config
from .distributed import ELASTIC_RUN_ID, SINGLE, Dist
from .evaluate import evaluate
from ..faults import fault_point
from .hooks import SOLVER_KEYS, adjoint_tol, certified_bound, model_config, solver_stats, solves_unconverged
from .jacobian import GENERATOR_NAME, JacobianSchedule
from ..data.images import LabelledImages
from .loggers import RunLogs, check_loggers
from .metrics import MeanMeter, fmt_number, json_number
from .optim import build_optimizer, build_scheduler, cycle_bounds
from .rundir import BEST_FILE as BEST, LAST, METRICS, commit_epoch, commit_step, locked, reconcile
from ..data.split import derive_seed
from .step import train_step

__all__ = ["Trainer", "LAST", "BEST", "METRICS"]

log = logging.getLogger("lmdeq.app.train")


@contextlib.contextmanager
def _field(name: str):
    """A checkpoint field that cannot be applied (damaged: wrong type, shape or content) is a CheckpointError
    naming it, not a traceback from deep inside torch (or a ConfigError about a value it holds)."""
    try:
        yield
    except (CheckpointError, DataError):
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as err:   # (ConfigError too)
        raise CheckpointError(f"checkpoint: its {name} field is damaged ({type(err).__name__}: "
                              f"{first_line(err)[:160]})") from None


def check_outputs(out_dir, log, checkpoint_every: int) -> tuple[tuple[str, ...], int]:
    """(the loggers of ``log``, ``checkpoint_every``) checked (:func:`lmdeq.app.train.loggers.check_loggers`, a
    count); ConfigError when either asks for files without a run directory."""
    names, every = check_loggers(log), checks.count("checkpoint_every", checkpoint_every)
    if (names or every) and out_dir is None:
        raise ConfigError("log / checkpoint_every: --log and --checkpoint-every need a run directory (--out)")
    return names, every


class _EpochTally:
    """The progress of the epoch under way: batches done, the running means of its record, its solve verdicts,
    its JR steps and training time so far (what a step checkpoint saves as ``epoch_progress``)."""

    def __init__(self):
        self.meter, self.jr_meter = MeanMeter(), MeanMeter()
        self.batches = self.unconverged = self.judged = self.jr_steps = 0
        self.time_s = 0.0

    def state(self) -> dict:
        return {"batches": self.batches, "unconverged": self.unconverged, "judged": self.judged,
                "jr_steps": self.jr_steps, "time_s": self.time_s, "meter": self.meter.state_dict(),
                "jr_meter": self.jr_meter.state_dict()}

    @classmethod
    def from_state(cls, state: dict, steps_per_epoch: int) -> "_EpochTally":
        tally = cls()
        for name in ("batches", "unconverged", "judged", "jr_steps"):
            setattr(tally, name, checks.count(name, state[name]))
        if not 0 < tally.batches < steps_per_epoch:
            raise ValueError(f"{tally.batches} batches done of an epoch of {steps_per_epoch}")
        tally.time_s = float(state["time_s"])
        tally.meter.load_state_dict(state["meter"])
        tally.jr_meter.load_state_dict(state["jr_meter"])
        return tally


class Trainer:
    """Trains ``model`` (already on ``device``) on ``train_data``; validates on ``val_data`` if given.

    ``out_dir``: the run directory for last.pt, best.pt and metrics.jsonl (None: nothing is written); it
    is locked while :meth:`fit` runs.
    ``bound_every``: the certified bound L is recomputed every this many steps (for the progress
    bar) and at every epoch end, on a fixed schedule so that display settings cannot change a run.
    ``on_epoch_end(record)``: called after each epoch's commit and log line (on every rank).
    ``checkpoint_every``: commit ``last.pt`` also after every this many optimiser steps within an epoch (0: at
    epoch ends only; see the module docstring). ``log``: names of :mod:`lmdeq.app.train.loggers` (needs
    ``out_dir``). ``run_config``: the resolved flags written as ``config.json`` (None: no config.json).
    ``dist``: this process's place in a data-parallel run (see the module docstring; ``device`` is then
    this rank's device); progress bars and ``print_fn`` are used on rank 0 only.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, train_data: LabelledImages,
                 val_data: LabelledImages | None, device: torch.device, workers: int = 0,
                 out_dir: str | Path | None = None, progress: bool = True, bound_every: int = 50,
                 on_epoch_end: Callable[[dict], None] | None = None, print_fn: Callable[[str], None] = print,
                 dist: Dist = SINGLE, allow_data_change: bool = False, checkpoint_every: int = 0, log=(),
                 run_config: dict | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if val_data is not None and val_data.classes != train_data.classes:
            raise ValueError(f"validation classes {val_data.classes} differ from training classes {train_data.classes}")
        if isinstance(bound_every, bool) or not isinstance(bound_every, int) or bound_every < 1:
            raise ValueError(f"bound_every must be a positive int, got {bound_every!r}")
        if not isinstance(dist, Dist):
            raise TypeError(f"dist must be a lmdeq.app.train.distributed.Dist, got {type(dist).__name__}")
        self.log_names, self.checkpoint_every = check_outputs(out_dir, log, checkpoint_every)
        check_shardable(len(train_data), cfg.batch_size, dist.world)
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        self.data_defaults = preset_defaults(cfg.preset)   # normalisation and augmentation of the preset
        self.forward_model = model  # what runs the training forward pass: the DDP wrapper once fit() starts
        self.train_data, self.val_data = train_data, val_data
        # What the run trains and validates on (the exact images, labels and classes after the split), recorded
        # in last.pt: a resume on other data is refused unless allow_data_change (see load_state_dict).
        self.data_digest = {"train": train_data.digest(), "val": val_data.digest() if val_data is not None else None}
        self.allow_data_change = allow_data_change
        self.workers, self.progress, self.bound_every = workers, progress and dist.is_main, bound_every
        self.on_epoch_end = on_epoch_end
        self.print = print_fn if dist.is_main else (lambda _line: None)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimiser steps
        self.history: list[dict] = []  # the metrics record of every completed epoch
        self.best_val_acc: float | None = None
        self.best_epoch: int | None = None
        self._best_weights: dict | None = None  # CPU copy of the best epoch's model state
        self.run_id = uuid.uuid4().hex
        self.forked_from: str | None = None  # the checkpoint a forked run continued, in another directory
        self.bound = certified_bound(model, training=True)  # of the map solved in training (progress bar)
        self.bound_eval = certified_bound(model, training=False)  # of the map solved at inference
        self.jacobian = JacobianSchedule.for_model(model, cfg.seed, cfg.epochs * self.steps_per_epoch)
        self._tally: _EpochTally | None = None  # the epoch under way (None: at an epoch end)
        self._last_commit: tuple[int, int] | None = None  # (epoch, step) of the newest last.pt
        self.run_config = run_config
        self._logs: RunLogs | None = None
        self._config_written = False

    def _generators(self) -> dict:
        """The run's own generators, saved and restored with the RNG state."""
        return {GENERATOR_NAME: self.jacobian.generator} if self.jacobian is not None else {}

    @property
    def certified(self) -> bool:
        """True when both bounds exist and are below 1: the solved maps are certified contractions."""
        return all(b is not None and b < 1.0 for b in (self.bound, self.bound_eval))

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The run state ``last.pt`` holds (see :mod:`lmdeq.app.train.checkpoint`)."""
        best_is_current = self.best_epoch is not None and self.best_epoch == self.epoch and self._tally is None
        return {
            "model_state": self.model.state_dict(),
            "model_config": model_config(self.model),
            "train_config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_size": len(self.train_data),
            "classes": list(self.train_data.classes),
            "data_digest": dict(self.data_digest),
            "run_id": self.run_id,
            "forked_from": self.forked_from,
            "history": [dict(r) for r in self.history],
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "best_model_state": None if best_is_current else self._best_weights,
            "lipschitz_bound": self.bound,
            "lipschitz_bound_eval": self.bound_eval,
            "rng": capture_rng_state(self._generators()),
            "world_size": self.dist.world,
            "elastic_run_id": os.environ.get(ELASTIC_RUN_ID),  # lets a torchrun restart continue this run
            "epoch_progress": None if self._tally is None else self._tally.state(),
        }

    def _check_same_data(self, saved) -> None:
        """DataError naming what differs when the checkpoint's run trained or validated on other images (same
        count and classes, other content: --data pointing at other files), unless ``allow_data_change``."""
        if not isinstance(saved, dict) or not all(isinstance(saved.get(k), (str, type(None))) for k in ("train", "val")):
            raise CheckpointError(f"checkpoint: its data_digest field is damaged ({type(saved).__name__}: "
                                  f"{str(saved)[:60]!r})")
        changed = [name for name, key in (("training", "train"), ("validation", "val"))
                   if saved.get(key) != self.data_digest[key]]
        if not changed:
            return
        what = " and ".join(changed)
        if not self.allow_data_change:
            raise DataError(f"data: the {what} images differ from those the run was trained on (same count and "
                            "classes, other content: does --data point at other files, or were files edited?); "
                            "resume with the original data, or pass --allow-data-change to continue on these")
        log.warning("data: resuming on other %s images than the run was trained on (--allow-data-change)", what)

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from a run state of this run (same config; ``epochs`` may have grown, see
        :mod:`lmdeq.app.train.config`); the RNG state is restored last."""
        saved_cfg = ckpt["train_config"]
        with _field("train_size"):
            saved = (int(ckpt["train_size"]), saved_cfg["batch_size"])
        now = (len(self.train_data), self.cfg.batch_size)
        if saved != now:
            raise DataError(f"checkpoint: its run had (training images, batch_size) = {saved}, this one {now}; the "
                            "batches and the lr schedule would not continue it (same --data and --limit-train?)")
        with _field("classes"):
            classes = tuple(str(c) for c in ckpt["classes"])
        if classes != tuple(self.train_data.classes):
            raise DataError(f"checkpoint: its run trained on the classes {list(classes)}, the data now has "
                            f"{list(self.train_data.classes)}")
        self._check_same_data(ckpt["data_digest"])
        saved_bounds = cycle_bounds(TrainConfig.from_dict(saved_cfg), self.steps_per_epoch)
        bounds = cycle_bounds(self.cfg, self.steps_per_epoch)
        if bounds[:len(saved_bounds) - 1] != saved_bounds[:-1] or bounds[-1] < saved_bounds[-1]:
            raise ValueError(f"the lr schedule {bounds} does not continue the checkpoint's {saved_bounds}")
        with _field("model_state"):
            self.model.load_state_dict(ckpt["model_state"])
        with _field("optimizer"):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        with _field("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if bounds != saved_bounds:  # extended: the lr of the next step follows the new schedule
            lrs = [base * fn(self.scheduler.last_epoch)
                   for base, fn in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            self.scheduler._last_lr = lrs
        with _field("epoch and step"):
            self.epoch, self.step = checks.count("epoch", ckpt["epoch"]), checks.count("step", ckpt["step"])
        with _field("epoch_progress"):
            progress = ckpt.get("epoch_progress")
            self._tally = None if progress is None else _EpochTally.from_state(progress, self.steps_per_epoch)
            done = 0 if self._tally is None else self._tally.batches
            if self.step != self.epoch * self.steps_per_epoch + done:
                raise ValueError(f"step {self.step} is not {self.epoch} epochs of {self.steps_per_epoch} steps and "
                                 f"{done} more")
        self._last_commit = (self.epoch, self.step)
        with _field("history"):
            self.history = [dict(r) for r in ckpt["history"]]
        self.run_id = ckpt["run_id"]
        self.forked_from = ckpt.get("forked_from")
        self.best_val_acc, self.best_epoch = ckpt["best_val_acc"], ckpt["best_epoch"]
        with _field("best_model_state"):
            best = ckpt["best_model_state"]
            if self.best_epoch is not None:
                best = ckpt["model_state"] if best is None else best
                self._best_weights = {k: v.detach().to("cpu", copy=True) for k, v in best.items()}
        self.bound, self.bound_eval = ckpt["lipschitz_bound"], ckpt["lipschitz_bound_eval"]
        saved_world = ckpt.get("world_size", 1)
        if saved_world != self.dist.world and self.dist.is_main:
            log.warning("resume: the run so far trained in %d process(es), now %d: the global batches and the lr "
                        "schedule continue unchanged, but shard-dependent state (BatchNorm statistics without "
                        "--sync-bn, dropout masks) differs from a run kept at %d", saved_world, self.dist.world,
                        saved_world)
        with _field("rng"):
            restore_generators(ckpt["rng"], self._generators())
            restore_rng_state(ckpt["rng"])

    # -- training ------------------------------------------------------------------------------
    def _postfix(self, meter: MeanMeter, last: dict) -> dict:
        return {"loss": fmt_number(meter.mean("loss"), ".4f"), "acc": fmt_number(meter.mean("acc"), ".3f"),
                "f_nstep": fmt_number(last.get("f_nstep"), ".3g"), "f_res": fmt_number(last.get("f_residual"), ".2e"),
                "b_nstep": fmt_number(last.get("b_nstep"), ".3g"), "b_res": fmt_number(last.get("b_residual"), ".2e"),
                "L": fmt_number(self.bound, ".4f")}

    def _across_ranks(self, stats: dict, verdict: bool | None, shard: int) -> tuple[dict, bool | None]:
        """This step's solver statistics and unconverged-solve verdict over the whole global batch: each
        statistic the shard-size-weighted mean over the ranks that report it; unconverged when any rank's
        solve was, None unless every rank could tell."""
        if not self.dist.enabled:
            return stats, verdict
        local = ([shard * stats[k] if k in stats else 0.0 for k in SOLVER_KEYS]
                 + [float(shard) if k in stats else 0.0 for k in SOLVER_KEYS]
                 + [float(verdict is True), float(verdict is not None)])
        total = self.dist.all_sum(torch.tensor(local, dtype=torch.float64)).tolist()
        m = len(SOLVER_KEYS)
        out = {k: total[i] / total[m + i] for i, k in enumerate(SOLVER_KEYS) if total[m + i] > 0}
        judged = total[2 * m + 1] == self.dist.world
        return out, (total[2 * m] > 0) if judged else None

    def train_epoch(self) -> dict:
        """One pass over the training images (the rest of it, after a step checkpoint); returns the epoch's means
        (loss, acc, solver stats) and ``unconverged_steps`` (fraction of steps on an unconverged solve; None if the
        model does not say)."""
        self.forward_model.train()
        epoch = self.epoch + 1
        if self._tally is None:
            self._tally = _EpochTally()
        tally = self._tally
        loader = train_batches(self.train_data, self.cfg.batch_size, self.cfg.seed, epoch, self.cfg.augment,
                               self.data_defaults.padding, workers=self.workers, pin_memory=self.device.type == "cuda",
                               shard=(self.dist.rank, self.dist.world), flip=self.data_defaults.flip)
        if tally.batches:   # resumed from a step checkpoint: the plan's first batches are done
            loader = islice(loader, tally.batches, None)
        last = {}
        start = time.perf_counter() - tally.time_s
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps_per_epoch, initial=tally.batches, desc=f"epoch {epoch}/{self.cfg.epochs}",
                       unit="step", dynamic_ncols=True)
        try:
            for images, labels in loader:
                draw = self.jacobian.draw(self.step) if self.jacobian is not None else None
                lr = self.optimizer.param_groups[0]["lr"]
                done = train_step(self.model, self.optimizer, self.scheduler, images, labels, self.device,
                                  len(self.train_data.classes), self.cfg.grad_clip,
                                  lambda v: NonFiniteError(f"training diverged: the loss is {v} at epoch {epoch}, "
                                                           f"step {self.step + 1}; {self._kept()} (try a lower "
                                                           "--lr or --grad-clip)"),
                                  forward=self.forward_model, dist=self.dist, jacobian=draw,
                                  stats=self.data_defaults, amp=self.cfg.amp)
                self.step += 1
                tally.batches += 1
                if draw is not None:
                    tally.jr_steps += int(draw.jac_loss)
                    if done.jac_loss is not None:
                        tally.jr_meter.update({"jac_loss": done.jac_loss})
                info = getattr(self.model, "last_info", None) or {}
                last, verdict = self._across_ranks(solver_stats(self.model, info=info),
                                                   solves_unconverged(self.model, info), done.shard)
                if verdict is not None:
                    tally.judged += 1
                    tally.unconverged += verdict
                tally.meter.update({"loss": done.loss, "acc": done.correct / done.batch, **last}, weight=done.batch)
                if self.step % self.bound_every == 0:
                    self.bound = certified_bound(self.model, training=True)
                if bar is not None:
                    bar.set_postfix(self._postfix(tally.meter, last), refresh=False)
                    bar.update(1)
                if self._logs is not None:
                    self._logs.step({"step": self.step, "epoch": epoch, "loss": done.loss,
                                     "acc": done.correct / done.batch, "lr": lr, **last, "jac_loss": done.jac_loss})
                fault_point("step")
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 \
                        and tally.batches < self.steps_per_epoch:
                    tally.time_s = time.perf_counter() - start
                    self._step_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        out = tally.meter.means()
        out["time_s"] = time.perf_counter() - start
        steps = tally.batches
        out["unconverged_steps"] = tally.unconverged / tally.judged if tally.judged == steps and steps else None
        if self.jacobian is not None:
            out.update(jr_steps=tally.jr_steps, jac_loss=tally.jr_meter.mean("jac_loss"))
        self._tally = None
        return out

    def _step_checkpoint(self) -> None:
        """Commit last.pt mid-epoch (see the module docstring); every rank first takes rank 0's buffers and ranks
        r > 0 reseed from (seed, rank, step), exactly as a run resumed from this checkpoint starts."""
        replicas.broadcast_buffers(self.model, self.dist)
        self._reseed_rank()
        self._commit(commit_step)
        fault_point("step-checkpoint")

    def _reseed_rank(self) -> None:
        """Ranks r > 0 (dropout masks of their shards): the RNG for the epoch about to start, or for the rest of it
        after a step checkpoint. Rank 0's RNG continues (it is saved in last.pt)."""
        if self.dist.is_main:
            return
        key = ("step", self.step) if self._tally is not None else (self.epoch + 1,)
        torch.manual_seed(derive_seed(self.cfg.seed, "rank", self.dist.rank, *key))

    def _commit(self, write: Callable[[Path, dict], None]) -> None:
        """Rank 0 commits the run state with ``write`` (:func:`commit_epoch` or :func:`commit_step`) after making
        the logs durable, then (the first commit of this fit) writes config.json; every rank fails if it fails."""
        def run():
            if self._logs is not None:
                self._logs.sync()
            write(self.out_dir, self.state_dict())
            if self.run_config is not None and not self._config_written:
                write_resolved_config(self.out_dir, self.run_config)
                self._config_written = True

        self.dist.agree(run, run=self.dist.is_main and self.out_dir is not None)
        self._last_commit = (self.epoch, self.step)

    def _record(self, train: dict, val: dict | None) -> dict:
        rec = {"epoch": self.epoch, "step": self.step, "world_size": self.dist.world,
               "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": train.get("loss"), "train_acc": train.get("acc"), "train_time_s": train["time_s"],
               "images_per_s": len(self.train_data) / train["time_s"] if train["time_s"] > 0 else None}
        for k in ("f_nstep", "f_residual", "b_nstep", "b_residual"):
            rec[k] = json_number(train.get(k))
        rec["unconverged_steps"] = json_number(train.get("unconverged_steps"))
        if "jr_steps" in train:
            rec.update(jr_steps=train["jr_steps"], jac_loss=json_number(train.get("jac_loss")))
        if val is not None:
            rec.update({"val_loss": val["loss"], "val_acc": val["acc"], "val_time_s": val["time_s"],
                        "val_f_nstep": json_number(val.get("f_nstep")),
                        "val_f_residual": json_number(val.get("f_residual"))})
        rec["lipschitz_bound"] = json_number(self.bound)
        rec["lipschitz_bound_eval"] = json_number(self.bound_eval)
        rec["certified"] = self.certified
        # The same bounds from verified operator norms (no power-iteration estimate): a check of the margin.
        rec["lipschitz_bound_verified"] = json_number(certified_bound(self.model, training=True, verified=True))
        rec["lipschitz_bound_eval_verified"] = json_number(certified_bound(self.model, training=False, verified=True))
        return rec

    def _epoch_line(self, rec: dict) -> str:
        val = (f" val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f} ({rec['val_time_s']:.1f}s)"
               if "val_acc" in rec else "")
        return (f"epoch {rec['epoch']}/{self.cfg.epochs}: train loss {fmt_number(rec['train_loss'], '.4f')} "
                f"acc {fmt_number(rec['train_acc'], '.4f')} ({rec['train_time_s']:.1f}s){val} "
                f"f_nstep {fmt_number(rec['f_nstep'])} b_nstep {fmt_number(rec['b_nstep'])} "
                f"L {fmt_number(self.bound, '.4f')} (verified {fmt_number(rec['lipschitz_bound_verified'], '.4f')}) "
                f"lr {rec['lr']:.3g}")

    def _warn_unverified(self, rec: dict) -> None:
        verified = rec.get("lipschitz_bound_verified")
        if self.certified and verified is not None and not verified < 1.0:
            log.warning("epoch %d: the certified bound L = %s rests on norm estimates that fell short: from verified "
                        "operator norms L = %.4g >= 1, so the solved map is not proven a contraction. Raise --set "
                        "power_iters=... or sigma_margin=..., or lower --lr", rec["epoch"],
                        fmt_number(self.bound, ".4g"), verified)

    def _warn_unconverged(self, rec: dict) -> None:
        frac = rec.get("unconverged_steps")
        if not frac:
            return
        cfg = model_config(self.model) or {}
        f_tol, b_tol = (cfg.get("forward") or {}).get("tol"), adjoint_tol(cfg)
        tol = f" (forward tol {f_tol:g}, adjoint tol {b_tol:g})" if f_tol is not None and b_tol is not None else ""
        log.warning("epoch %d: %.0f%% of the training steps ran on solves that did not reach their tolerance%s: "
                    "forward residual %s, backward residual %s, certified L %s; the gradients are then not those of "
                    "the equilibrium. Raise the solves' max_iter (--set f_max_iter=.../b_max_iter=...), or keep the certified "
                    "bound L < 1 (lower s)",
                    rec["epoch"], 100 * frac, tol, fmt_number(rec.get("f_residual")),
                    fmt_number(rec.get("b_residual")), fmt_number(self.bound, ".4g"))

    def _check_weights_finite(self) -> None:
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            self.epoch -= 1  # not completed: it is not committed
            raise NonFiniteError(f"training diverged: weights became NaN/Inf during epoch {self.epoch + 1} (e.g. "
                                 f"{bad[:3]}); {self._kept()} (try a lower --lr or --grad-clip)")

    def _kept(self) -> str:
        if self.out_dir is None:
            return "nothing was saved (no run directory)"
        if self._last_commit is None:
            return "no epoch was committed"
        epoch, step = self._last_commit
        within = step - epoch * self.steps_per_epoch
        return (f"{self.out_dir / LAST} keeps the state after epoch {epoch}"
                + (f" and {within} steps of epoch {epoch + 1} (step {step})" if within else ""))

    def _start_replicas(self) -> None:
        """Data-parallel: wrap the model in DDP (once) and start every rank from rank 0's state."""
        if not self.dist.enabled:
            return
        if self.forward_model is self.model:
            self.forward_model = replicas.wrap(self.model, self.dist, self.device)
        replicas.broadcast_state(self.model, self.dist)

    def _open_run_dir(self, stack: contextlib.ExitStack) -> None:
        """Rank 0: lock the run directory (for the duration of ``stack``), repair what a crash left, and open the
        logs at the current step."""
        if self.out_dir is not None:
            stack.enter_context(locked(self.out_dir))
            reconcile(self.out_dir, self.state_dict())
            if self.log_names:
                self._logs = RunLogs(self.log_names, self.out_dir, self.run_id, self.run_config)
                stack.callback(self._close_logs)
                self._logs.open(self.step, self.history)

    def _close_logs(self) -> None:
        logs, self._logs = self._logs, None
        logs.close()

    def fit(self) -> dict:
        """Train from the current epoch to ``cfg.epochs``; returns a summary of the run."""
        with contextlib.ExitStack() as stack:
            self.dist.from_main(lambda: self._open_run_dir(stack))
            self._start_replicas()
            start = time.perf_counter()
            while self.epoch < self.cfg.epochs:
                self._reseed_rank()
                train = self.train_epoch()
                self.epoch += 1
                replicas.broadcast_buffers(self.model, self.dist)
                replicas.check_in_sync(self.model, self.dist, f"after epoch {self.epoch}")
                self._check_weights_finite()
                val = None
                if self.val_data is not None:
                    val = evaluate(self.model, self.val_data, self.cfg.eval_batch_size, self.device, self.workers,
                                   self.progress, desc=f"val {self.epoch}", dist=self.dist, stats=self.data_defaults)
                self.bound = certified_bound(self.model, training=True)
                self.bound_eval = certified_bound(self.model, training=False)
                if val is not None and (self.best_val_acc is None or val["acc"] > self.best_val_acc):
                    self.best_val_acc, self.best_epoch = val["acc"], self.epoch
                    self._best_weights = {k: v.detach().to("cpu", copy=True)
                                          for k, v in self.model.state_dict().items()}
                rec = self._record(train, val)
                self.history.append(rec)
                if self._logs is not None:   # before the commit, which makes them durable
                    self._logs.epoch(rec, self.history)
                self._commit(commit_epoch)
                self.print(self._epoch_line(rec))
                if self.dist.is_main:
                    self._warn_unconverged(rec)
                    self._warn_unverified(rec)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(rec)
        return {"epochs": self.epoch, "steps": self.step, "final": self.history[-1] if self.history else None,
                "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "lipschitz_bound": self.bound,
                "lipschitz_bound_eval": self.bound_eval, "certified": self.certified,
                "time_s": time.perf_counter() - start}
