"""The training loop: one optimiser step per batch, the Lipschitz constraint after every step,
validation, checkpoints and the JSONL metrics log after every epoch.

Step t (0-based, global), :func:`lmdeq.train.step.train_step`: logits = model(normalize(batch_t));
loss = CE(logits, y); backward; optional global grad-norm clipping; Adam step with lr = cosine_lr(t);
scheduler step; ``model.constraint_step()``. After epoch e (1-based): evaluate on the validation images, write
``last.pt`` (and ``best.pt`` when validation accuracy improves), then append the epoch's record to
``metrics.jsonl``. Resuming from ``last.pt`` reproduces the uninterrupted run bit for bit on the
same device (batches are a function of (seed, epoch); every other state is in the checkpoint).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from .batches import train_batches
from .checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from .config import TrainConfig
from .evaluate import evaluate
from .hooks import certified_bound, model_config, solver_stats
from .images import LabelledImages
from .metrics import MeanMeter, append_jsonl, fmt_number, json_number, truncate_jsonl
from .optim import build_optimizer, build_scheduler
from .step import train_step

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class Trainer:
    """Trains ``model`` (already on ``device``) on ``train_data``; validates on ``val_data`` if given.

    ``out_dir``: where last.pt, best.pt and metrics.jsonl go (None: nothing is written).
    ``bound_every``: the certified bound L is recomputed every this many steps (for the progress
    bar) and at every epoch end, on a fixed schedule so that display settings cannot change a run.
    ``on_epoch_end(record)``: called after each epoch's checkpoint and log line.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, train_data: LabelledImages,
                 val_data: LabelledImages | None, device: torch.device, workers: int = 0,
                 out_dir: str | Path | None = None, progress: bool = True, bound_every: int = 50,
                 on_epoch_end: Callable[[dict], None] | None = None, print_fn: Callable[[str], None] = print):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if val_data is not None and val_data.classes != train_data.classes:
            raise ValueError(f"validation classes {val_data.classes} differ from training classes {train_data.classes}")
        if isinstance(bound_every, bool) or not isinstance(bound_every, int) or bound_every < 1:
            raise ValueError(f"bound_every must be a positive int, got {bound_every!r}")
        self.model, self.cfg, self.device = model, cfg, device
        self.train_data, self.val_data = train_data, val_data
        self.workers, self.progress, self.bound_every = workers, progress, bound_every
        self.on_epoch_end, self.print = on_epoch_end, print_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.epochs * self.steps_per_epoch, cfg)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimiser steps
        self.best_val_acc: float | None = None
        self.best_epoch: int | None = None
        self.bound = certified_bound(model, training=True)  # of the map solved in training (progress bar)
        self.bound_eval = certified_bound(model, training=False)  # of the map solved at inference

    @property
    def certified(self) -> bool:
        """True when both bounds exist and are below 1: the solved maps are certified contractions."""
        return all(b is not None and b < 1.0 for b in (self.bound, self.bound_eval))

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model_state": self.model.state_dict(),
            "model_config": model_config(self.model),
            "train_config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_size": len(self.train_data),
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "lipschitz_bound": self.bound,
            "lipschitz_bound_eval": self.bound_eval,
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from a checkpoint of this run (same config); the RNG state is restored last."""
        saved = (ckpt["train_size"], ckpt["train_config"]["batch_size"], ckpt["train_config"]["epochs"])
        now = (len(self.train_data), self.cfg.batch_size, self.cfg.epochs)
        if saved != now:
            raise ValueError(f"checkpoint: its run had (training images, batch_size, epochs) = {saved}, this one "
                             f"{now}; the batches and the lr schedule would not continue it")
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.best_val_acc, self.best_epoch = ckpt["best_val_acc"], ckpt["best_epoch"]
        self.bound, self.bound_eval = ckpt["lipschitz_bound"], ckpt["lipschitz_bound_eval"]
        if self.out_dir is not None:
            truncate_jsonl(self.out_dir / METRICS, self.epoch)
        restore_rng_state(ckpt["rng"])

    def _save(self, improved: bool) -> None:
        if self.out_dir is None:
            return
        state = self.state_dict()
        save_checkpoint(self.out_dir / LAST, state)
        if improved:
            save_checkpoint(self.out_dir / BEST, state)

    # -- training ------------------------------------------------------------------------------
    def _postfix(self, meter: MeanMeter, last: dict) -> dict:
        return {"loss": fmt_number(meter.mean("loss"), ".4f"), "acc": fmt_number(meter.mean("acc"), ".3f"),
                "f_nstep": fmt_number(last.get("f_nstep"), ".3g"), "f_res": fmt_number(last.get("f_residual"), ".2e"),
                "b_nstep": fmt_number(last.get("b_nstep"), ".3g"), "b_res": fmt_number(last.get("b_residual"), ".2e"),
                "L": fmt_number(self.bound, ".4f")}

    def train_epoch(self) -> dict:
        """One pass over the training images; returns the epoch's means (loss, acc, solver stats)."""
        self.model.train()
        epoch = self.epoch + 1
        loader = train_batches(self.train_data, self.cfg.batch_size, self.cfg.seed, epoch, self.cfg.augment,
                               workers=self.workers, pin_memory=self.device.type == "cuda")
        meter, last = MeanMeter(), {}
        start = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.cfg.epochs}", unit="step",
                       dynamic_ncols=True)
        try:
            for images, labels in loader:
                done = train_step(self.model, self.optimizer, self.scheduler, images, labels, self.device,
                                  len(self.train_data.classes), self.cfg.grad_clip,
                                  lambda v: FloatingPointError(f"loss is {v} at epoch {epoch}, step {self.step + 1}; "
                                                               "the last checkpoint holds the last finite state"))
                self.step += 1
                last = solver_stats(self.model)
                meter.update({"loss": done.loss, "acc": done.correct / done.batch, **last}, weight=done.batch)
                if self.step % self.bound_every == 0:
                    self.bound = certified_bound(self.model, training=True)
                if bar is not None:
                    bar.set_postfix(self._postfix(meter, last), refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        out = meter.means()
        out["time_s"] = time.perf_counter() - start
        return out

    def _record(self, train: dict, val: dict | None) -> dict:
        rec = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": train.get("loss"), "train_acc": train.get("acc"), "train_time_s": train["time_s"],
               "images_per_s": len(self.train_data) / train["time_s"] if train["time_s"] > 0 else None}
        for k in ("f_nstep", "f_residual", "b_nstep", "b_residual"):
            rec[k] = json_number(train.get(k))
        if val is not None:
            rec.update({"val_loss": val["loss"], "val_acc": val["acc"], "val_time_s": val["time_s"],
                        "val_f_nstep": json_number(val.get("f_nstep")),
                        "val_f_residual": json_number(val.get("f_residual"))})
        rec["lipschitz_bound"] = json_number(self.bound)
        rec["lipschitz_bound_eval"] = json_number(self.bound_eval)
        rec["certified"] = self.certified
        return rec

    def _epoch_line(self, rec: dict) -> str:
        val = (f" val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f} ({rec['val_time_s']:.1f}s)"
               if "val_acc" in rec else "")
        return (f"epoch {rec['epoch']}/{self.cfg.epochs}: train loss {fmt_number(rec['train_loss'], '.4f')} "
                f"acc {fmt_number(rec['train_acc'], '.4f')} ({rec['train_time_s']:.1f}s){val} "
                f"f_nstep {fmt_number(rec['f_nstep'])} b_nstep {fmt_number(rec['b_nstep'])} "
                f"L {fmt_number(self.bound, '.4f')} "
                f"lr {rec['lr']:.3g}")

    def fit(self) -> dict:
        """Train from the current epoch to ``cfg.epochs``; returns a summary of the run."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        rec = None
        while self.epoch < self.cfg.epochs:
            train = self.train_epoch()
            self.epoch += 1
            val = None
            if self.val_data is not None:
                val = evaluate(self.model, self.val_data, self.cfg.eval_batch_size, self.device, self.workers,
                               self.progress, desc=f"val {self.epoch}")
            self.bound = certified_bound(self.model, training=True)
            self.bound_eval = certified_bound(self.model, training=False)
            improved = val is not None and (self.best_val_acc is None or val["acc"] > self.best_val_acc)
            if improved:
                self.best_val_acc, self.best_epoch = val["acc"], self.epoch
            self._save(improved)
            rec = self._record(train, val)
            if self.out_dir is not None:
                append_jsonl(self.out_dir / METRICS, rec)
            self.print(self._epoch_line(rec))
            if self.on_epoch_end is not None:
                self.on_epoch_end(rec)
        return {"epochs": self.epoch, "steps": self.step, "final": rec, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch, "lipschitz_bound": self.bound, "lipschitz_bound_eval": self.bound_eval,
                "certified": self.certified, "time_s": time.perf_counter() - start}
