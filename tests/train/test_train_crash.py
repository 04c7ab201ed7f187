"""A run killed (SIGKILL, at an exact named instant) and resumed ends with exactly the files and weights of
an uninterrupted run; the epoch end is one atomic commit (issue: data loss 1).

Every run, the reference included, is a forked child with one intra-op thread; the child kills itself at
the fault point named by LMDEQ_FAULT_AT (lmdeq.app.faults), so nothing depends on timing.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import shutil

import pytest
import torch
from train_helpers import resume_path, run_in_fork, tiny_run_config, train_tiny, write_image_folder

from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.metrics import read_jsonl, write_jsonl
from lmdeq.app.train.rundir import compare_runs

ROOT = Path(__file__).resolve().parents[2]


_cfg = tiny_run_config   # seed 0: best.pt lags last.pt (validation improves at epochs 1 and 2, not at 3)
_train = train_tiny


def _train_or_resume(cfg, out, cache):
    """What a user does after a crash: resume when the run has a last.pt, else start it again."""
    train_tiny(cfg, out, cache, resume=resume_path(out))


def assert_same_run(ref: Path, got: Path):
    """The run directories hold the same files, the same final state and the same best epoch."""
    assert sorted(p.name for p in got.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    assert compare_runs(ref, got) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    write_image_folder(root / "data" / "train")
    cfg = _cfg(root / "data")
    assert run_in_fork(_train, cfg, root / "ref", root / "cache") == 0
    ref = load_checkpoint(root / "ref" / "last.pt")
    assert ref["best_epoch"] == 2 and ref["epoch"] == 3  # the case where best.pt is not the last epoch
    return root, cfg


FAULTS = [
    "step@2",                 # mid epoch 1, nothing committed yet
    "epoch-end@1",            # epoch 1 computed, nothing written
    "last.pt:partial@1",      # half of the first last.pt's temporary file
    "last.pt:written@1",      # first last.pt complete but not renamed
    "last.pt:renamed@1",      # the issue's case: first last.pt committed, best.pt and metrics.jsonl not yet
    "best.pt:partial@1",
    "best.pt:renamed@2",      # epoch 2's best.pt written, metrics not yet
    "metrics.jsonl:partial@2",
    "metrics.jsonl:written@2",
    "last.pt:partial@3",      # epoch 3 (not an improvement) half written
    "last.pt:renamed@3",      # the final last.pt committed, its metrics record not yet written
    "metrics.jsonl:renamed@3",  # everything written, killed before the run returned
]


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_at_each_instant_then_resume_equals_uninterrupted_run(reference, fault):
    root, cfg = reference
    out = root / fault.replace(":", "_").replace("@", "_")
    assert run_in_fork(_train, cfg, out, root / "cache", fault=fault) == -signal.SIGKILL
    assert run_in_fork(_train_or_resume, cfg, out, root / "cache") == 0
    assert_same_run(root / "ref", out)


def test_killed_twice_also_resumes_exactly(reference):
    """Killed after the first commit, then the resumed run killed mid-write of its next last.pt."""
    root, cfg = reference
    out = root / "twice"
    assert run_in_fork(_train, cfg, out, root / "cache", fault="last.pt:renamed@1") == -signal.SIGKILL
    assert run_in_fork(_train_or_resume, cfg, out, root / "cache", fault="last.pt:partial@1") == -signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the torn temporary file is there ...
    assert run_in_fork(_train_or_resume, cfg, out, root / "cache") == 0
    assert_same_run(root / "ref", out)  # ... and gone after the resume


@pytest.mark.slow
def test_compare_runs_sees_every_difference(reference, tmp_path):
    """The comparison the tests above rely on is not vacuous."""
    root, _ = reference
    ref = root / "ref"

    def altered(change):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(ref, copy)
        change(copy)
        return compare_runs(ref, copy)

    def weight(copy):
        ckpt = torch.load(copy / "last.pt", weights_only=True)
        name = next(iter(ckpt["model_state"]))
        ckpt["model_state"][name] = ckpt["model_state"][name] + 1e-7
        torch.save(ckpt, copy / "last.pt")

    def best_epoch(copy):
        ckpt = torch.load(copy / "best.pt", weights_only=True)
        torch.save({**ckpt, "epoch": 1}, copy / "best.pt")

    def log_line(copy):
        records = read_jsonl(copy / "metrics.jsonl")
        write_jsonl(copy / "metrics.jsonl", records[:-1] + [{**records[-1], "val_acc": 0.123}])

    def timing_only(copy):
        records = read_jsonl(copy / "metrics.jsonl")
        write_jsonl(copy / "metrics.jsonl", [{**r, "train_time_s": 99.0} for r in records])

    assert altered(weight) == ["last.pt: model_state differs"]
    assert altered(best_epoch) == ["best.pt: epoch differs"]
    assert altered(log_line) == ["metrics.jsonl differs", "metrics.jsonl is not the history its last.pt committed"]
    assert altered(lambda c: (c / "best.pt").unlink())[0].startswith("files")
    assert altered(timing_only) == ["metrics.jsonl is not the history its last.pt committed"]


def test_the_issue_reproduction_through_the_command_line(tmp_path):
    """`lmdeq train` (a real process, the real MDEQ) killed just after the first last.pt, then resumed:
    metrics.jsonl holds epochs [1, 2, 3] and best.pt exists (it held [2, 3] and no best.pt before)."""
    write_image_folder(tmp_path / "d" / "train", per_class=2, classes=tuple(f"k{i}" for i in range(10)))
    argv = [sys.executable, "-m", "lmdeq.app.cli", "train", "--data", str(tmp_path / "d"), "--epochs", "3",
            "--batch-size", "15", "--val-fraction", "0.25", "--device", "cpu", "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "run"), "--no-progress", "--set", "channels=[8,8]", "--set", "head_channels=[4,8]",
            "--set", "final_channels=32", "--set", "num_groups=4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMDEQ_FAULT_AT": "last.pt:renamed@1"}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "last.pt"]
    env.pop("LMDEQ_FAULT_AT")
    resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "repaired" in resumed.stderr and "rewrote best.pt (epoch 1)" in resumed.stderr
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    summary = load_checkpoint(tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == summary["best_epoch"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
