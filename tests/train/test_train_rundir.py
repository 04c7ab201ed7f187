"""The run directory: resuming only from its newest state or forking (issue: data loss 2), its exclusive
lock (data loss 3), and extending a finished run's epochs (item 12)."""
import multiprocessing
import os
import shutil
import signal

import pytest
import torch
from train_helpers import TinyDEQClassifier, run_in_fork

from lmdeq.errors import CheckpointError, ConfigError, RunDirectoryError, RunLockedError
from lmdeq.app.train import TrainConfig, run_training
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.cli import main
from lmdeq.app.train.metrics import read_jsonl
from lmdeq.app.train.rundir import LOCK, compare_runs, locked


def _cfg(data, **kw):
    return TrainConfig(data=str(data), epochs=3, batch_size=5, eval_batch_size=7, val_fraction=0.25, seed=0, **kw)


def _train(cfg, out, resume=None, **kw):
    return run_training(cfg, device="cpu", out_dir=out, cache_dir=out.parent / "cache", progress=False, bound_every=2,
                        resume=resume, model_factory=lambda _c: TinyDEQClassifier(), print_fn=lambda s: None, **kw)


def _snapshot(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def _same_weights(a, b):
    sa, sb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def finished_run(image_folder, tmp_path):
    """A finished 3-epoch run, and a copy of its last.pt after epoch 1 (an older state)."""
    out = tmp_path / "run"

    def keep_epoch_1(rec):
        if rec["epoch"] == 1:
            shutil.copy(out / "last.pt", tmp_path / "epoch1.pt")

    _train(_cfg(image_folder.parent), out, on_epoch_end=keep_epoch_1)
    return _cfg(image_folder.parent), out, tmp_path / "epoch1.pt"


def test_resuming_from_best_pt_is_refused_and_changes_nothing(finished_run):
    cfg, out, _ = finished_run
    before = _snapshot(out)
    with pytest.raises(CheckpointError, match="weights of the best epoch only.*resume from the run's last.pt"):
        _train(cfg, out, resume=out / "best.pt")
    assert _snapshot(out) == before


def test_resuming_an_older_state_into_its_run_is_refused(finished_run):
    cfg, out, epoch1 = finished_run
    shutil.copy(epoch1, out / "epoch1.pt")  # an older checkpoint inside the run directory
    before = _snapshot(out)
    with pytest.raises(RunDirectoryError, match=r"would rewind or overwrite it.*--out NEW_DIR"):
        _train(cfg, out, resume=out / "epoch1.pt")
    assert _snapshot(out) == before
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_an_older_state_forks_into_a_new_directory(finished_run, tmp_path):
    cfg, out, epoch1 = finished_run
    before = _snapshot(out)
    _train(cfg, tmp_path / "fork", resume=epoch1)
    assert _snapshot(out) == before  # the original run is untouched
    fork = tmp_path / "fork"
    assert sorted(p.name for p in fork.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    assert compare_runs(out, fork) == []  # deterministic: the fork redoes epochs 2-3 exactly alike
    assert load_checkpoint(fork / "last.pt")["forked_from"] == str(epoch1)


def test_cli_resume_from_best_pt_is_one_line(finished_run, capsys):
    _, out, _ = finished_run
    before = _snapshot(out)
    assert main(["train", "--resume", str(out / "best.pt"), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "best epoch only" in err and "Traceback" not in err
    assert _snapshot(out) == before


def _hold_lock(run_dir, acquired, release):
    with locked(run_dir):
        acquired.set()
        release.wait(60)


def test_a_second_run_into_a_locked_directory_fails_naming_the_holder(image_folder, tmp_path, capsys):
    ctx = multiprocessing.get_context("fork")
    acquired, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path / "run", acquired, release))
    holder.start()
    try:
        assert acquired.wait(60)
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            _train(_cfg(image_folder.parent), tmp_path / "run")
        rc = main(["train", "--data", str(image_folder.parent), "--out", str(tmp_path / "run"), "--no-progress",
                   "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--set", "channels=[8,8]",
                   "--set", "head_channels=[4,8]", "--set", "final_channels=32", "--set", "num_groups=4"])
        err = capsys.readouterr().err
        assert rc == 2 and f"in use by process {holder.pid}" in err and "Traceback" not in err
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK]  # nothing written by the refused run
    finally:
        release.set()
        holder.join(60)
    _train(_cfg(image_folder.parent), tmp_path / "run")  # free again once the holder is done
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


def _die_holding_lock(run_dir):
    with locked(run_dir):
        os.kill(os.getpid(), signal.SIGKILL)


def test_the_stale_lock_of_a_killed_process_is_taken_over(image_folder, tmp_path, caplog):
    assert run_in_fork(_die_holding_lock, tmp_path / "run") == -signal.SIGKILL
    stale_pid = (tmp_path / "run" / LOCK).read_text().strip()
    assert stale_pid.isdigit()
    with caplog.at_level("INFO", logger="lmdeq"):
        _train(_cfg(image_folder.parent), tmp_path / "run")
    assert f"left by process {stale_pid} which is no longer running" in caplog.text
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert not (tmp_path / "run" / LOCK).exists()


def test_two_runs_never_interleave(image_folder, tmp_path):
    """The issue's case: a second run started while the first trains is refused, the first one's log is
    epochs [1, 2, 3] (not [1, 1, 2, 2, 3, 3])."""
    cfg = _cfg(image_folder.parent)
    second = {}

    def start_second(rec):
        if rec["epoch"] == 1:
            ctx = multiprocessing.get_context("fork")
            proc = ctx.Process(target=_train, args=(cfg, tmp_path / "run"))
            proc.start()
            proc.join(120)
            second["rc"] = proc.exitcode

    _train(cfg, tmp_path / "run", on_epoch_end=start_second)
    assert second["rc"] == 1  # the child raised RunLockedError
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_a_run_that_fails_before_its_first_epoch_leaves_no_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        run_training(_cfg(tmp_path / "missing"), device="cpu", out_dir=tmp_path / "runs" / "r",
                     cache_dir=tmp_path / "cache", progress=False, model_factory=lambda _c: TinyDEQClassifier(),
                     print_fn=lambda s: None)
    assert not (tmp_path / "runs").exists()


def test_extending_a_finished_run_restarts_the_cosine(image_folder, tmp_path):
    """--epochs 1, then --resume with --epochs 3: the added epochs run a new cosine cycle; the result
    equals a run planned with lr_restarts=[1] (and a run killed at epoch 1 of it resumes to the same)."""
    data = image_folder.parent
    _train(_cfg(data).replace(epochs=1), tmp_path / "ext")
    ckpt = load_checkpoint(tmp_path / "ext" / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-6)  # the first cycle ended at min_lr
    summary = _train(_cfg(data), tmp_path / "ext", resume=tmp_path / "ext" / "last.pt")
    assert summary["epochs"] == 3
    _train(_cfg(data, lr_restarts=[1]), tmp_path / "planned")
    assert _same_weights(tmp_path / "ext" / "last.pt", tmp_path / "planned" / "last.pt")
    records = read_jsonl(tmp_path / "ext" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["lr"] > 10 * records[0]["lr"]  # the restart: lr back up after epoch 1's end
    assert load_checkpoint(tmp_path / "ext" / "last.pt")["train_config"]["lr_restarts"] == [1]
    with pytest.raises(ConfigError, match="epochs=2 is fewer than the 3"):
        _train(_cfg(data).replace(epochs=2), tmp_path / "ext", resume=tmp_path / "ext" / "last.pt")


def test_a_full_disk_at_the_commit_is_a_clear_error_and_keeps_the_previous_epoch(image_folder, tmp_path,
                                                                                  monkeypatch):
    import errno

    from lmdeq.app.train import rundir

    real = rundir.save_checkpoint

    def full_at_epoch_2(path, payload, kind):
        if payload.get("epoch") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, payload, kind)

    monkeypatch.setattr(rundir, "save_checkpoint", full_at_epoch_2)
    with pytest.raises(RunDirectoryError, match="No space left on device.*are intact.*resume the run"):
        _train(_cfg(image_folder.parent), tmp_path / "run")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    _train(_cfg(image_folder.parent), tmp_path / "run", resume=tmp_path / "run" / "last.pt")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
