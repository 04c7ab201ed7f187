"""Config validation, the cosine schedule, checkpoints and RNG state, the JSONL log, model hooks."""
import json
import math
import random

import numpy as np
import pytest
import torch

from lmdeq.errors import CheckpointError
from lmdeq.app.train.checkpoint import (capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint,
                                    seed_everything)
from lmdeq.app.train.config import TrainConfig
from lmdeq.app.train.hooks import certified_bound, solver_stats
from lmdeq.app.train.metrics import MeanMeter, json_number, read_jsonl, write_jsonl
from lmdeq.app.train.optim import build_optimizer, build_scheduler, cosine_lr, scheduled_lr


@pytest.mark.parametrize("field,value,err", [
    ("epochs", 0, ValueError), ("epochs", 1.5, TypeError), ("batch_size", True, TypeError),
    ("lr", 0.0, ValueError), ("lr", float("nan"), ValueError), ("val_fraction", 1.0, ValueError),
    ("limit_train", 0, ValueError), ("seed", -1, ValueError), ("weight_decay", -1e-4, ValueError),
    ("model_overrides", [], TypeError), ("lipschitz", 1, TypeError),
])
def test_config_rejects_bad_values(field, value, err):
    with pytest.raises(err, match=field):
        TrainConfig(**{field: value})


def test_config_round_trip_and_unknown_keys():
    cfg = TrainConfig(epochs=3, model_overrides={"dropout": 0.1})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown training config keys.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_cosine_schedule_per_step():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, epochs=2)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, 5)  # 2 epochs of 5 steps: one cycle of 10
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    expected = [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(11)]
    assert max(abs(a - b) / b for a, b in zip(lrs, expected)) < 1e-12
    assert cosine_lr(20, 10, 1e-3, 1e-5) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(opt, cfg, 0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(torch.nn.ReLU(), cfg)


def test_cosine_restarts_after_the_extended_epochs():
    """lr_restarts=[2] on a 5-epoch run: steps [0, 2T) one cosine, [2T, 5T) a fresh one from lr."""
    bounds = [0, 8, 20]
    lr, lo = 1e-3, 1e-6
    got = [scheduled_lr(t, bounds, lr, lo) for t in range(22)]
    first = [lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    second = [lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * t / 12)) for t in range(12)]
    assert got[:8] == pytest.approx(first, rel=1e-12) and got[8:20] == pytest.approx(second, rel=1e-12)
    assert got[8] == pytest.approx(lr) and got[20] == got[21] == pytest.approx(lo)
    cfg = TrainConfig(epochs=5, lr_restarts=[2])
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, 4)
    for _ in range(8):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr)
    for bad in ([5], [0], [3, 2], [2, 2]):
        with pytest.raises(ValueError, match="lr_restarts"):
            TrainConfig(epochs=5, lr_restarts=bad)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(7)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    save_checkpoint(tmp_path / "c.pt", {"rng": state})
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    seed_everything(99)
    restore_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_checkpoint_write_is_atomic_and_load_checks_format(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(path, {"epoch": 1})
    assert torch.load(path, weights_only=True)["epoch"] == 1

    def _crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", _crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the old checkpoint survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    with pytest.raises(CheckpointError, match=r"incomplete: it lacks \['model_state'"):
        load_checkpoint(path)  # a run checkpoint without its state
    torch.save({"state": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an lmdeq training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_jsonl_is_rewritten_whole_and_non_finite_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    records = [{"epoch": e, "bound": json_number(math.inf if e == 3 else 0.5)} for e in (1, 2, 3)]
    write_jsonl(path, records)
    assert [r["bound"] for r in read_jsonl(path)] == [0.5, 0.5, None]
    write_jsonl(path, records[:2])
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2]
    with pytest.raises(ValueError):
        write_jsonl(path, [{"x": math.nan}])
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2] and [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_mean_meter_weights_and_missing_keys():
    m = MeanMeter()
    m.update({"a": 1.0, "b": 4.0}, weight=3)
    m.update({"a": 3.0}, weight=1)
    assert m.mean("a") == pytest.approx(1.5) and m.mean("b") == 4.0 and m.mean("c") is None


def test_hooks_work_with_any_classifier(tiny_model_cls):
    plain = torch.nn.Linear(3, 2)
    assert solver_stats(plain) == {} and certified_bound(plain) is None
    model = tiny_model_cls()
    model(torch.zeros(2, 3, 32, 32))
    stats = solver_stats(model)
    assert stats["f_nstep"] == 6 and "b_nstep" not in stats


@pytest.mark.parametrize("version", [1, 2])
def test_checkpoints_of_older_formats_are_refused_saying_why(tmp_path, version):
    """Formats 1 and 2 spelt the solves in flat f_/b_ keys: refused, not guessed at; a future format too."""
    old = {"format": "lmdeq-train-checkpoint", "version": version, "kind": "best", "model_state": {"w": torch.zeros(2)},
           "model_config": {"f_max_iter": None}, "train_config": {}, "epoch": 3}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=f"format version {version}, this lmdeq reads 3 .*older lmdeq"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({**old, "version": 7}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 7, this lmdeq reads 3$"):
        load_checkpoint(tmp_path / "future.pt")
