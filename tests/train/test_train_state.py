"""Config validation, the cosine schedule, checkpoints and RNG state, the JSONL log, model hooks."""
import json
import math
import random

import numpy as np
import pytest
import torch

from lmdeq.train.checkpoint import (capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint,
                                    seed_everything)
from lmdeq.train.config import TrainConfig
from lmdeq.train.hooks import certified_bound, solver_stats
from lmdeq.train.metrics import MeanMeter, append_jsonl, json_number, read_jsonl, truncate_jsonl
from lmdeq.train.optim import build_optimizer, build_scheduler, cosine_lr


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
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, 10, cfg)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    expected = [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(11)]
    assert max(abs(a - b) / b for a, b in zip(lrs, expected)) < 1e-12
    assert cosine_lr(20, 10, 1e-3, 1e-5) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, 0, cfg)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(torch.nn.ReLU(), cfg)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(7)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    save_checkpoint(tmp_path / "c.pt", {"rng": state})
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    seed_everything(99)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_checkpoint_write_is_atomic_and_load_checks_format(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    assert load_checkpoint(path)["epoch"] == 1

    def _crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", _crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    torch.save({"state": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an lmdeq training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_jsonl_append_truncate_and_non_finite(tmp_path):
    path = tmp_path / "m.jsonl"
    for e in (1, 2, 3):
        append_jsonl(path, {"epoch": e, "bound": json_number(math.inf if e == 3 else 0.5)})
    assert [r["bound"] for r in read_jsonl(path)] == [0.5, 0.5, None]
    truncate_jsonl(path, 2)
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2]
    with pytest.raises(ValueError):
        append_jsonl(path, {"x": math.nan})


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
