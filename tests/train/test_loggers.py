"""``--log csv,tensorboard,wandb`` (issue 27 item 4): per-step and per-epoch values, checked against the run's own
references (the lr schedule, metrics.jsonl, the epoch means), and a killed and resumed run logging exactly what an
uninterrupted one logs, no step twice. Runs are forked children that kill themselves at named fault points
(lmdeq.app.faults). 18 training images, batch 5: 4 steps per epoch, 3 epochs."""
import csv
import json
import re
import signal
import sys
import time

import pytest
from train_helpers import TinyDEQClassifier, resume_path, run_in_fork, tiny_run_config, train_tiny, write_image_folder

from lmdeq.app.train import run_training
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.cli import main
from lmdeq.app.train.loggers import STEP_COLUMNS, wandb_id
from lmdeq.app.train.metrics import read_jsonl
from lmdeq.app.train.optim import cycle_bounds, scheduled_lr
from lmdeq.app.train.rundir import compare_runs
from lmdeq.errors import ConfigError

STEPS_PER_EPOCH, EPOCHS = 4, 3


_cfg = tiny_run_config   # EPOCHS epochs of STEPS_PER_EPOCH steps


def _train(cfg, out, cache, log=("csv", "tensorboard"), resume=None):
    train_tiny(cfg, out, cache, resume=resume, log=log)


def _resume(cfg, out, cache, log=("csv", "tensorboard")):
    _train(cfg, out, cache, log, resume=resume_path(out))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    write_image_folder(root / "data" / "train")
    cfg = _cfg(root / "data")
    assert run_in_fork(_train, cfg, root / "ref", root / "cache") == 0
    return root, cfg


def test_the_step_rows_agree_with_the_schedule_and_the_epoch_records(reference):
    root, cfg = reference
    steps, epochs = _rows(root / "ref" / "steps.csv"), _rows(root / "ref" / "epochs.csv")
    assert tuple(steps[0]) == STEP_COLUMNS
    assert [int(r["step"]) for r in steps] == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    bounds = cycle_bounds(cfg, STEPS_PER_EPOCH)
    for r in steps:   # the lr the step used: the schedule's at its 0-based index
        assert float(r["lr"]) == scheduled_lr(int(r["step"]) - 1, bounds, cfg.lr, cfg.min_lr)
        assert int(r["epoch"]) == (int(r["step"]) - 1) // STEPS_PER_EPOCH + 1
        assert float(r["f_nstep"]) == 6 and r["jac_loss"] == ""
    history = read_jsonl(root / "ref" / "metrics.jsonl")
    assert [{k: json.loads(v.lower()) if v else None for k, v in row.items()} for row in epochs] == history
    sizes = [5, 5, 5, 3]   # the epoch's batches: its mean loss weighs each step by its batch size
    for e, rec in enumerate(history, start=1):
        mine = [r for r in steps if int(r["epoch"]) == e]
        loss = sum_ = 0.0
        for r, n in zip(mine, sizes):
            loss += float(r["loss"]) * n
            sum_ += n
        assert loss / sum_ == rec["train_loss"]
        assert sum(float(r["acc"]) * n for r, n in zip(mine, sizes)) / sum_ == pytest.approx(rec["train_acc"])


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_every_step_and_epoch(reference):
    root, _ = reference
    scalars = _scalars(root / "ref")
    steps = _rows(root / "ref" / "steps.csv")
    assert scalars["train/loss"] == [(int(r["step"]), pytest.approx(float(r["loss"]))) for r in steps]
    history = read_jsonl(root / "ref" / "metrics.jsonl")
    assert scalars["epoch/val_acc"] == [(rec["step"], pytest.approx(rec["val_acc"])) for rec in history]
    assert scalars["epoch/lipschitz_bound"] == [(rec["step"], pytest.approx(rec["lipschitz_bound"]))
                                                for rec in history]


# A kill after steps 5 and 6 were logged but only step 4 (epoch 1) committed; at the epoch-2 record logged, not
# committed; and after the epoch-1 commit, before the epoch's own logs were rewritten.
@pytest.mark.parametrize("fault", ["step@6", "epoch-end@2", "last.pt:renamed@1"])
def test_a_killed_and_resumed_run_logs_exactly_the_uninterrupted_run(reference, fault):
    root, cfg = reference
    out = root / fault.replace(":", "_").replace("@", "_")
    assert run_in_fork(_train, cfg, out, root / "cache", fault=fault) == -signal.SIGKILL
    assert run_in_fork(_resume, cfg, out, root / "cache") == 0
    assert compare_runs(root / "ref", out) == []   # steps.csv byte for byte, epochs.csv but its timings
    assert (out / "steps.csv").read_bytes() == (root / "ref" / "steps.csv").read_bytes()
    assert len(list((out / "tensorboard").iterdir())) == 2   # the killed process's events and the resumed one's
    assert _untimed(_scalars(out)) == _untimed(_scalars(root / "ref"))   # as TensorBoard shows them: no step twice


def _untimed(scalars):
    return {tag: v for tag, v in scalars.items() if not tag.endswith(("_time_s", "images_per_s"))}


def test_a_sitting_resumed_within_the_same_second_sorts_after_the_earlier_one(tmp_path):
    """TensorBoard reads event files in name order: an earlier sitting's file of this very second, whose host and
    pid part sorts after ours, must still come first."""
    pytest.importorskip("tensorboard")
    from lmdeq.app.train.loggers import TENSORBOARD_DIR, _TensorBoard

    logs = tmp_path / TENSORBOARD_DIR
    logs.mkdir()
    earlier = logs / f"events.out.tfevents.{int(time.time()):010d}.~.99999999.0"   # (sorts after any host name)
    earlier.write_bytes(b"")
    board = _TensorBoard(tmp_path)
    board.open(0, [])
    board.close()
    assert sorted(p.name for p in logs.iterdir())[0] == earlier.name


def test_a_torn_last_row_is_dropped_on_resume(reference):
    root, cfg = reference
    out = root / "torn"
    assert run_in_fork(_train, cfg, out, root / "cache", ("csv",), fault="step@6") == -signal.SIGKILL
    with open(out / "steps.csv", "a") as fh:
        fh.write("7,2,0.51")   # what a kill in the middle of a row leaves
    assert run_in_fork(_resume, cfg, out, root / "cache", ("csv",)) == 0
    assert (out / "steps.csv").read_bytes() == (root / "ref" / "steps.csv").read_bytes()


def test_wandb_continues_the_run_of_the_same_id(reference, monkeypatch):
    pytest.importorskip("wandb")
    root, cfg = reference
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, cfg = root / "wandb", cfg.replace(epochs=2)
    assert run_in_fork(_train, cfg, out, root / "cache", ("wandb",), fault="step@6") == -signal.SIGKILL
    assert run_in_fork(_resume, cfg, out, root / "cache", ("wandb",)) == 0
    run = wandb_id(load_checkpoint(out / "last.pt")["run_id"], out)
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    # both sittings log to the run of the same id (wandb adds "-1" to the folder when both started in one second)
    folder = rf"offline-run-\d{{8}}_\d{{6}}-{run}(-\d+)?"
    assert len(runs) == 2 and all(re.fullmatch(folder, name) for name in runs), runs
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("logger,module,package", [("tensorboard", "torch.utils.tensorboard", "tensorboard"),
                                                   ("wandb", "wandb", "wandb")])
def test_a_logger_whose_package_is_missing_is_a_clear_error(tmp_path, capsys, monkeypatch, logger, module, package):
    monkeypatch.setitem(sys.modules, module, None)   # import fails as when the package is not installed
    with pytest.raises(ConfigError, match=f"--log {logger} needs the {package} package"):
        run_training(_cfg(tmp_path), device="cpu", out_dir=tmp_path / "run", log=[logger])
    assert main(["train", "--data", str(tmp_path), "--log", f"csv,{logger}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"lmdeq train: error: log: --log {logger} needs the {package} package" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_log_names_on_the_command_line(tmp_path, capsys):
    from lmdeq.app.cli import build_parser

    args = build_parser().parse_args(["train", "--log", "csv,tensorboard", "--log", "jsonl"])
    assert args.log == ["csv", "tensorboard", "jsonl"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--log", "csv,nope"])
    err = capsys.readouterr().err
    assert "argument --log: expected comma-separated loggers of jsonl, csv, tensorboard, wandb" in err
    with pytest.raises(ConfigError, match="need a run directory"):
        run_training(_cfg(tmp_path), device="cpu", log=["csv"], model_factory=lambda _c: TinyDEQClassifier())
