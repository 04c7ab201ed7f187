"""Train + resume equals an uninterrupted run, bit for bit (CPU, workers=0); run-level errors."""
import pytest
import torch

from lmdeq.app.train import TrainConfig, run_evaluation, run_training
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.metrics import read_jsonl

TIMING_KEYS = {"train_time_s", "val_time_s", "images_per_s"}


class Interrupted(Exception):
    pass


def _stop_after(epoch):
    def hook(record):
        if record["epoch"] == epoch:
            raise Interrupted
    return hook


def _config(root, **kw):
    return TrainConfig(data=str(root), epochs=2, batch_size=5, eval_batch_size=7, val_fraction=0.25, seed=11, **kw)


def _run(cfg, out, model_cls, **kw):
    return run_training(cfg, device="cpu", workers=0, out_dir=out, cache_dir=out.parent / "cache", progress=False,
                        bound_every=2, model_factory=lambda _c: model_cls(), print_fn=lambda s: None, **kw)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_resume_equals_uninterrupted_run(image_folder, tmp_path, tiny_model_cls):
    cfg = _config(image_folder.parent)
    full = _run(cfg, tmp_path / "full", tiny_model_cls)
    with pytest.raises(Interrupted):
        _run(cfg, tmp_path / "split", tiny_model_cls, on_epoch_end=_stop_after(1))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    resumed = _run(cfg, tmp_path / "split", tiny_model_cls, resume=tmp_path / "split" / "last.pt")

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    logs = [_strip(read_jsonl(tmp_path / run / "metrics.jsonl")) for run in ("full", "split")]
    assert logs[0] == logs[1] and len(logs[0]) == 2
    assert full["final"]["val_acc"] == resumed["final"]["val_acc"]
    assert full["lipschitz_bound"] == resumed["lipschitz_bound"] < 1.0


def test_resume_without_rng_state_differs(image_folder, tmp_path, tiny_model_cls, monkeypatch):
    """The exactness above is not vacuous: dropout makes the run depend on the restored RNG state."""
    cfg = _config(image_folder.parent)
    _run(cfg, tmp_path / "full", tiny_model_cls)
    with pytest.raises(Interrupted):
        _run(cfg, tmp_path / "split", tiny_model_cls, on_epoch_end=_stop_after(1))
    monkeypatch.setattr("lmdeq.app.train.trainer.restore_rng_state", lambda state: None)
    _run(cfg, tmp_path / "split", tiny_model_cls, resume=tmp_path / "split" / "last.pt")
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model_state"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_and_resume_guards(image_folder, tmp_path, tiny_model_cls):
    cfg = _config(image_folder.parent, limit_train=10).replace(epochs=1)
    _run(cfg, tmp_path / "run", tiny_model_cls)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"last.pt", "best.pt", "metrics.jsonl"}
    with pytest.raises(FileExistsError, match="already holds a run"):
        _run(cfg, tmp_path / "run", tiny_model_cls)
    with pytest.raises(ValueError, match=r"lr=0\.01 \(checkpoint: 0\.001\)"):
        _run(cfg.replace(lr=0.01), tmp_path / "run", tiny_model_cls, resume=tmp_path / "run" / "last.pt")
    # already finished: resuming trains nothing more and keeps the log
    again = _run(cfg, tmp_path / "run", tiny_model_cls, resume=tmp_path / "run" / "last.pt")
    assert again["steps"] == 2 and len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1


def test_evaluation_of_a_checkpoint_reproduces_validation(image_folder, tmp_path, tiny_model_cls):
    cfg = _config(image_folder.parent).replace(epochs=1)
    summary = _run(cfg, tmp_path / "run", tiny_model_cls)
    result = run_evaluation(tmp_path / "run" / "last.pt", device="cpu", cache_dir=tmp_path / "cache",
                            progress=False, model_factory=lambda c: tiny_model_cls(**c))
    assert result["split"] == "val (holdout)" and result["n"] == 6
    assert result["acc"] == summary["final"]["val_acc"]
    assert result["loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-6)
    assert result["certified"] and result["lipschitz_bound"] < 1.0
    with pytest.raises(ValueError, match="split must be one of"):
        run_evaluation(tmp_path / "run" / "last.pt", split="test", device="cpu", cache_dir=tmp_path / "cache",
                       progress=False, model_factory=lambda c: tiny_model_cls(**c))


class _BadLogits(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.lin = torch.nn.Linear(3 * 32 * 32, out)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_trainer_rejects_too_few_logits_and_non_finite_loss(image_folder, tmp_path):
    cfg = _config(image_folder.parent).replace(epochs=1)
    with pytest.raises(ValueError, match="returns 2 logits but the data has 4 classes"):
        run_training(cfg, device="cpu", cache_dir=tmp_path / "cache", progress=False,
                     model_factory=lambda _c: _BadLogits(2), print_fn=lambda s: None)

    def nan_model(_c):
        m = _BadLogits(4)
        torch.nn.init.constant_(m.lin.weight, float("nan"))
        return m

    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, step 1"):
        run_training(cfg, device="cpu", cache_dir=tmp_path / "cache", progress=False, model_factory=nan_model,
                     print_fn=lambda s: None)


def test_device_errors():
    from lmdeq.app.train.run import resolve_device
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device must be"):
        resolve_device(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_resume_refuses_a_different_training_set(image_folder, tmp_path, tiny_model_cls):
    cfg = _config(image_folder.parent).replace(epochs=1)
    _run(cfg, tmp_path / "run", tiny_model_cls)
    other = tmp_path / "other"
    from train_helpers import write_image_folder
    write_image_folder(other / "train", per_class=9)
    with pytest.raises(ValueError, match=r"batch_size\) = \(18, 5\), this one \(27, 5\)"):
        _run(cfg.replace(data=str(other)), tmp_path / "run", tiny_model_cls, resume=tmp_path / "run" / "last.pt")


def test_resume_refuses_other_images_of_the_same_count_unless_told(image_folder, tmp_path, tiny_model_cls, caplog):
    """Same count and classes, other pixels (--data pointing at another folder): the run is not the one that
    was started. Refused, naming what changed; --allow-data-change continues with a warning."""
    import logging

    from train_helpers import write_image_folder

    from lmdeq.errors import CheckpointError, DataError

    cfg = _config(image_folder.parent).replace(epochs=2)
    with pytest.raises(Interrupted):
        _run(cfg, tmp_path / "run", tiny_model_cls, on_epoch_end=_stop_after(1))
    started_on = load_checkpoint(tmp_path / "run" / "last.pt")["data_digest"]
    other = tmp_path / "other"
    write_image_folder(other / "train", seed=7)   # same count and classes as image_folder, other noise
    moved = cfg.replace(data=str(other))
    with pytest.raises(DataError, match="the training and validation images differ .* --allow-data-change"):
        _run(moved, tmp_path / "run", tiny_model_cls, resume=tmp_path / "run" / "last.pt")
    with caplog.at_level(logging.WARNING, logger="lmdeq.app.train"):
        done = _run(moved, tmp_path / "run", tiny_model_cls, resume=tmp_path / "run" / "last.pt",
                    allow_data_change=True)
    assert done["steps"] == 8 and "resuming on other training and validation images" in caplog.text
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["data_digest"]["train"] != started_on["train"]   # last.pt records what it now trained on
    damaged = dict(ckpt, data_digest=["not", "a", "dict"], epoch=1)
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="damaged data_digest field"):
        _run(moved.replace(epochs=3), tmp_path / "fork", tiny_model_cls, resume=tmp_path / "damaged.pt")


@pytest.mark.parametrize("field,value", [("optimizer", "garbage"), ("optimizer", {"state": {}, "param_groups": []}),
                                         ("scheduler", [1, 2]), ("rng", {"torch": "x"}), ("history", 5),
                                         ("classes", 3), ("train_size", "many"), ("model_state", {"x": torch.ones(1)}),
                                         ("epoch", -1), ("best_model_state", "w")])
def test_a_damaged_field_is_a_checkpoint_error_naming_it(image_folder, tmp_path, tiny_model_cls, field, value):
    from lmdeq.errors import CheckpointError

    cfg = _config(image_folder.parent).replace(epochs=2)
    with pytest.raises(Interrupted):
        _run(cfg, tmp_path / "run", tiny_model_cls, on_epoch_end=_stop_after(1))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    if field == "best_model_state":
        ckpt["best_epoch"] = 1
    torch.save(dict(ckpt, **{field: value}), tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=f"its {field}.* field is damaged|damaged {field} field"):
        _run(cfg, tmp_path / "fork", tiny_model_cls, resume=tmp_path / "damaged.pt")
