"""The logs a run writes beside ``metrics.jsonl``, chosen with ``lmdeq train --log NAMES``.

Names (:data:`LOGGERS`):

* ``jsonl``: ``metrics.jsonl``, one record per epoch, always written (derived from last.pt by
  :mod:`lmdeq.app.train.rundir`); naming it changes nothing;
* ``csv``: ``steps.csv``, one row per optimiser step (:data:`STEP_COLUMNS`), and ``epochs.csv``, one row per
  epoch (the metrics.jsonl records: validation loss and accuracy, certified bounds L, ...);
* ``tensorboard``: event files under ``tensorboard/`` (``torch.utils.tensorboard``, which needs the tensorboard
  package): the step values as ``train/<column>`` at their step, an epoch's numbers as ``epoch/<key>`` at the
  step count of its end;
* ``wandb``: a Weights & Biases run (needs the wandb package; ``WANDB_PROJECT`` (default 'lmdeq'), ``WANDB_MODE``
  etc. as W&B reads them) whose id is :func:`wandb_id` of the run's ``run_id`` and directory (a resumed run
  continues it, a fork into another directory is another W&B run), with the resolved config: the step values as
  ``train/<column>`` and the epoch's as ``epoch/<key>``, at W&B step = the optimiser step count.

The values of step t (1-based): the global batch's mean loss and accuracy before the update, the lr the update
used, the solver statistics of its solves, and its Jacobian-regularisation estimate on a JR step.

Kill-safety. Only a committed last.pt (after S steps) survives a crash; the steps after S are redone, bit for bit,
by the resumed run. So before every commit the logs are made durable (:meth:`RunLogs.sync`: the rows of steps
<= S are on disk whenever the last.pt of step S is), and a resumed run opens them at S: ``steps.csv`` is cut back
to its rows of steps <= S (a torn last line dropped) and ``epochs.csv`` rewritten from last.pt's history, each
atomically; TensorBoard writes ``purge_step = S + 1`` (its reader then hides the events of steps > S that the
killed process wrote); W&B continues the run of the same id, and a step it already holds is not sent again
(what it holds of a redone step is what the resumed run computes). A killed and resumed run thus ends with
exactly the CSV rows of an uninterrupted one, none twice.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import io
import os
import time
from pathlib import Path

from ...errors import ConfigError, RunDirectoryError
from ..atomic import atomic_write_bytes

LOGGERS = ("jsonl", "csv", "tensorboard", "wandb")
STEP_COLUMNS = ("step", "epoch", "loss", "acc", "lr", "f_nstep", "f_residual", "b_nstep", "b_residual", "jac_loss")
STEPS_CSV, EPOCHS_CSV, TENSORBOARD_DIR = "steps.csv", "epochs.csv", "tensorboard"
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}  # (module, package)


def log_names(value: str) -> list[str]:
    """An argparse type: comma-separated logger names of :data:`LOGGERS`."""
    names = [n.strip() for n in value.split(",")]
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated loggers of {', '.join(LOGGERS)}, got {value!r}")
    return names


def _csv_text(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _cell(value) -> str:
    return "" if value is None else str(value)


class _CSV:
    def __init__(self, out_dir: Path):
        self.steps, self.epochs = out_dir / STEPS_CSV, out_dir / EPOCHS_CSV
        self.fh = None

    def open(self, step: int, history: list[dict]) -> None:
        header = _csv_text([STEP_COLUMNS])
        kept = header
        if self.steps.is_file():
            text = self.steps.read_text(encoding="utf-8", errors="replace")
            lines = text.split("\n")[:-1]   # complete lines (a torn last one has no newline)
            if lines and lines[0] + "\n" != header:
                raise RunDirectoryError(f"out: {self.steps} has other columns ({lines[0][:80]!r}) than the "
                                        f"{','.join(STEP_COLUMNS)} this lmdeq writes; move it away to resume")
            kept += "".join(line + "\n" for line in lines[1:] if int(line.split(",", 1)[0]) <= step)
            if kept != text:
                atomic_write_bytes(self.steps, kept.encode("utf-8"))
        else:
            atomic_write_bytes(self.steps, kept.encode("utf-8"))
        self._write_epochs(history)
        self.fh = open(self.steps, "a", encoding="utf-8", newline="")

    def _write_epochs(self, history: list[dict]) -> None:
        columns = list(dict.fromkeys(k for record in history for k in record))
        rows = [columns] + [[_cell(record.get(k)) for k in columns] for record in history]
        atomic_write_bytes(self.epochs, _csv_text(rows if history else []).encode("utf-8"))

    def step(self, row: dict) -> None:
        self.fh.write(_csv_text([[_cell(row.get(k)) for k in STEP_COLUMNS]]))
        self.fh.flush()

    def epoch(self, record: dict, history: list[dict]) -> None:
        self._write_epochs(history)

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _numbers(values: dict, prefix: str, skip=("step", "epoch")) -> dict:
    return {f"{prefix}/{k}": v for k, v in values.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _after_earlier_sittings(log_dir: Path) -> None:
    """Wait past the second of the newest event file in ``log_dir``. TensorBoard reads a directory's event files in
    name order, and a name is events.out.tfevents.<seconds, 10 digits>.<host>.<pid>...: a sitting resumed within
    the second an earlier one opened its file could sort before it (by host or pid) and have its steps purged as
    out of order."""
    seconds = [int(part) for part in (p.name.split(".")[3] for p in log_dir.glob("events.out.tfevents.*"))
               if part.isdigit()]
    if seconds:
        wait = max(seconds) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


class _TensorBoard:
    def __init__(self, out_dir: Path):
        self.log_dir = out_dir / TENSORBOARD_DIR
        self.writer = None

    def open(self, step: int, history: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        _after_earlier_sittings(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step + 1)

    def step(self, row: dict) -> None:
        for tag, v in _numbers(row, "train").items():
            self.writer.add_scalar(tag, v, row["step"])

    def epoch(self, record: dict, history: list[dict]) -> None:
        for tag, v in _numbers(record, "epoch").items():
            self.writer.add_scalar(tag, v, record["step"])

    def sync(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def wandb_id(run_id: str, out_dir: str | os.PathLike) -> str:
    """The W&B run id of the run ``run_id`` in the directory ``out_dir``."""
    key = f"{run_id}:{Path(out_dir).resolve()}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


class _WandB:
    def __init__(self, out_dir: Path, run_id: str, config: dict | None):
        self.out_dir, self.run_id, self.config = out_dir, run_id, config
        self.run, self.first = None, 0

    def open(self, step: int, history: list[dict]) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lmdeq"), name=self.out_dir.name,
                              id=wandb_id(self.run_id, self.out_dir), resume="allow", dir=str(self.out_dir))
        if self.config:
            self.run.config.update(self.config, allow_val_change=True)
        self.first = self.run.step   # the steps before it W&B holds already (a resumed run redoes them identically)

    def _log(self, values: dict, step: int) -> None:
        if values and step >= self.first:
            self.run.log(values, step=step)

    def step(self, row: dict) -> None:
        self._log(_numbers(row, "train"), row["step"])

    def epoch(self, record: dict, history: list[dict]) -> None:
        self._log(_numbers(record, "epoch"), record["step"])

    def sync(self) -> None:
        pass   # W&B keeps its own files; a step it holds is never sent twice (see the module docstring)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def check_loggers(names) -> tuple[str, ...]:
    """The loggers of ``names`` (each of :data:`LOGGERS`; 'jsonl' is always on and left out), in order, once
    each; ConfigError naming the package a chosen logger needs when it cannot be imported."""
    chosen = tuple(dict.fromkeys(n for n in names if n != "jsonl"))
    bad = [n for n in chosen if n not in LOGGERS]
    if bad:
        raise ConfigError(f"log: unknown logger(s) {bad}; known: {', '.join(LOGGERS)}")
    for name in chosen:
        if name not in _NEEDS:
            continue
        module, package = _NEEDS[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"log: --log {name} needs the {package} package, which is not installed ({err}); "
                              f"pip install {package} (or pip install 'lmdeq[{package}]')") from None
    return chosen


class RunLogs:
    """The chosen loggers of a run directory (rank 0 only); see the module docstring. ``config``: the resolved
    config W&B records (None: none)."""

    def __init__(self, names, out_dir: str | os.PathLike, run_id: str, config: dict | None = None):
        self.names = check_loggers(names)
        out = Path(out_dir)
        make = {"csv": lambda: _CSV(out), "tensorboard": lambda: _TensorBoard(out),
                "wandb": lambda: _WandB(out, run_id, config)}
        self._logs = [make[n]() for n in self.names]

    def open(self, step: int, history: list[dict]) -> None:
        """Start logging after ``step`` completed steps whose epochs' records are ``history`` (a resumed run: what
        its last.pt holds), dropping what the logs hold of later steps."""
        for log in self._logs:
            log.open(step, history)

    def step(self, row: dict) -> None:
        """One optimiser step's values (:data:`STEP_COLUMNS`; absent ones left empty)."""
        for log in self._logs:
            log.step(row)

    def epoch(self, record: dict, history: list[dict]) -> None:
        """A committed epoch's record, ``history`` every record so far."""
        for log in self._logs:
            log.epoch(record, history)

    def sync(self) -> None:
        """Make what was logged durable (called before every commit of last.pt)."""
        for log in self._logs:
            log.sync()

    def close(self) -> None:
        for log in self._logs:
            log.close()
