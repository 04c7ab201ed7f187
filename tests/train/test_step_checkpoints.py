"""Step checkpoints (``--checkpoint-every N``): a mid-epoch last.pt written as atomically as an epoch end's, from
which a killed run resumes to exactly the files and weights of an uninterrupted one (issue 27 item 4).

Every run is a forked child with one intra-op thread that kills itself at the fault point LMDEQ_FAULT_AT names
(lmdeq.app.faults), so nothing depends on timing. 18 training images, batch 5: 4 steps per epoch, 3 epochs.
"""
import shutil
import signal

import pytest
import torch
from ddp_helpers import run_ranks
from train_helpers import TinyDEQClassifier, resume_path, run_in_fork, tiny_run_config, train_tiny, write_image_folder

from lmdeq.app.train import run_training
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.rundir import compare_runs
from lmdeq.errors import CheckpointError, ConfigError

EVERY = 3   # steps 3, 6 (mid epoch 2) and 9 (mid epoch 3); step 12 ends epoch 3 (no step checkpoint there)


_cfg = tiny_run_config


def _train(cfg, out, cache, every=EVERY, resume=None, log=("csv",)):
    train_tiny(cfg, out, cache, resume=resume, checkpoint_every=every, log=log)


def _train_or_resume(cfg, out, cache):
    _train(cfg, out, cache, resume=resume_path(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    write_image_folder(root / "data" / "train")
    cfg = _cfg(root / "data")
    assert run_in_fork(_train, cfg, root / "ref", root / "cache") == 0
    return root, cfg


def test_step_checkpoints_do_not_change_the_run(reference):
    """The same run without step checkpoints (nor step logs) ends with the same files and weights."""
    root, cfg = reference
    assert run_in_fork(_train, cfg, root / "plain", root / "cache", 0, None, ()) == 0
    shutil.copytree(root / "ref", root / "ref-no-logs", ignore=shutil.ignore_patterns("*.csv"))
    assert compare_runs(root / "ref-no-logs", root / "plain") == []


FAULTS = [
    "step-checkpoint@1",      # step 3 committed mid epoch 1, killed at once
    "step-checkpoint@2",      # step 6, mid epoch 2
    "step@8",                 # epoch 2's last step: resumes from step 6, redoes 7 and 8
    "last.pt:partial@3",      # the step-6 checkpoint half written: resumes from epoch 1's end (step 4)
    "last.pt:written@3",      # complete but not renamed: the same
    "last.pt:renamed@3",      # in place, killed before anything else
    "epoch-end@2",            # epoch 2 computed after a step checkpoint in it
    "step-checkpoint@3",      # step 9, the first of epoch 3
    "step@11",                # mid epoch 3, two steps after the last step checkpoint
]


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_then_resume_equals_the_uninterrupted_run(reference, fault):
    root, cfg = reference
    out = root / fault.replace(":", "_").replace("@", "_")
    assert run_in_fork(_train, cfg, out, root / "cache", fault=fault) == -signal.SIGKILL
    assert run_in_fork(_train_or_resume, cfg, out, root / "cache") == 0
    assert compare_runs(root / "ref", out) == []   # last.pt, best.pt, metrics.jsonl, steps.csv, epochs.csv
    ref, got = load_checkpoint(root / "ref" / "last.pt"), load_checkpoint(out / "last.pt")
    assert all(torch.equal(ref["model_state"][k], got["model_state"][k]) for k in ref["model_state"])


@pytest.fixture(scope="module")
def held(reference):
    """The reference run killed right after its step-6 checkpoint (2 batches into epoch 2)."""
    root, cfg = reference
    out = root / "held"
    assert run_in_fork(_train, cfg, out, root / "cache", fault="step-checkpoint@2") == -signal.SIGKILL
    return out


def test_a_step_checkpoint_holds_the_epoch_under_way(held):
    ckpt = load_checkpoint(held / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 6) and ckpt["epoch_progress"]["batches"] == 2
    assert len(ckpt["history"]) == 1 and ckpt["best_epoch"] == 1
    # the best epoch's weights are kept apart: the model has moved on since epoch 1
    epoch1 = load_checkpoint(held / "best.pt")["model_state"]
    assert ckpt["best_model_state"] is not None
    assert all(torch.equal(epoch1[k], ckpt["best_model_state"][k]) for k in epoch1)
    assert not all(torch.equal(epoch1[k], ckpt["model_state"][k]) for k in epoch1)
    rows = (held / "steps.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]


PROGRESS = {"batches": 2, "unconverged": 0, "judged": 2, "jr_steps": 0, "time_s": 0.5,
            "meter": {"sums": {"loss": 1.0}, "weights": {"loss": 10.0}}, "jr_meter": {"sums": {}, "weights": {}}}


@pytest.mark.parametrize("change", [
    {"epoch_progress": {**PROGRESS, "batches": 4}},        # an epoch of 4 batches is then over
    {"epoch_progress": "three"},
    {"epoch_progress": {**PROGRESS, "meter": {"sums": {"loss": 1.0}, "weights": {}}}},
    {"epoch_progress": PROGRESS, "step": 5},               # epoch 1 done and 2 batches is step 6
])
def test_a_damaged_epoch_progress_is_a_checkpoint_error(reference, held, tmp_path, change):
    root, cfg = reference
    torch.save({**load_checkpoint(held / "last.pt"), **change}, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="epoch_progress"):
        _train(cfg, tmp_path / "fork", root / "cache", resume=tmp_path / "damaged.pt")


def test_checkpoint_every_needs_a_run_directory(reference):
    root, cfg = reference
    with pytest.raises(ConfigError, match="--checkpoint-every need a run directory"):
        run_training(cfg, device="cpu", cache_dir=root / "cache", progress=False, checkpoint_every=2,
                     model_factory=lambda _c: TinyDEQClassifier(), print_fn=lambda s: None)


def _train_rank(rank, cfg, out, cache, resume=None):
    _train(cfg, out, cache, resume=resume)


@pytest.fixture(scope="module")
def two_ranks(reference):
    """The reference run in two data-parallel processes (torchrun-like, gloo): the stand-in model's dropout draws
    from each rank's RNG, which a step checkpoint must leave resumable on rank 1 too."""
    root, cfg = reference
    assert run_ranks(_train_rank, 2, cfg, root / "two", root / "cache") == [0, 0]
    return root / "two"


@pytest.mark.parametrize("fault", ["step-checkpoint@2;rank=0", "step@8;rank=1"])
def test_two_processes_resume_from_a_step_checkpoint_exactly(reference, two_ranks, fault):
    root, cfg = reference
    out = root / ("two-" + fault.split(";")[0].replace("@", "_"))
    assert -signal.SIGKILL in run_ranks(_train_rank, 2, cfg, out, root / "cache", fault=fault)
    assert load_checkpoint(out / "last.pt")["step"] == 6   # the step-6 checkpoint, mid epoch 2
    assert run_ranks(_train_rank, 2, cfg, out, root / "cache", out / "last.pt") == [0, 0]
    assert compare_runs(two_ranks, out) == []
