"""``--amp bf16`` (issue 27 item 4): the training forward pass under bf16 autocast on the CPU (the same code path as
CUDA's), while the certified bound, its power iterations and the constraint upkeep stay fp32: the bound computed
under bf16 autocast equals the fp32 one bit for bit, a bf16 run trains (its loss decreases) and records the fp32
bound of its weights, and resume keeps the run's amp."""
import pytest
import torch
from train_helpers import write_image_folder

from lmdeq.app.train import TrainConfig, run_training
from lmdeq.app.train import trainer as trainer_module
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.cli import main
from lmdeq.app.train.hooks import certified_bound
from lmdeq.app.train.model import build_model
from lmdeq.app.train.rundir import compare_runs
from lmdeq.models import mdeq

CLASSES10 = tuple(f"k{i}" for i in range(10))
TINY = {"channels": [8, 8], "head_channels": [4, 8], "final_channels": 32, "num_groups": 4}
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _model():
    torch.manual_seed(0)
    return mdeq("cifar10-small", **TINY)


def test_the_library_keeps_the_bound_and_the_constraint_in_fp32_under_autocast():
    """Two identical models, one driven under bf16 autocast: the same certified bound (training and inference
    mode), the same power-iteration estimates after the constraint upkeep, to the bit."""
    ref, amp = _model(), _model()
    with torch.no_grad():   # move the weights so that the estimates and the bound are recomputed
        for m in (ref, amp):
            torch.manual_seed(1)
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ref.constraint_step()
    with torch.autocast(**BF16):
        amp.constraint_step()
        bounds = [certified_bound(amp, training=t) for t in (True, False)]
    assert bounds == [certified_bound(ref, training=t) for t in (True, False)]
    assert 0 < bounds[0] < 1
    mine, theirs = ref.state_dict(), amp.state_dict()
    assert [k for k in mine if not torch.equal(mine[k], theirs[k])] == []
    assert {theirs[k].dtype for k in theirs if k.endswith(("sigma", "power_vector"))} == {torch.float32}


def _data(tmp_path):
    write_image_folder(tmp_path / "d" / "train", per_class=4, classes=CLASSES10)
    return TrainConfig(data=str(tmp_path / "d"), epochs=3, batch_size=10, val_fraction=0.25, lr=1e-2,
                       model_overrides=TINY, seed=0)


def test_a_bf16_run_trains_in_bf16_and_records_the_fp32_bound(tmp_path):
    cfg = _data(tmp_path).replace(amp="bf16")
    seen = []

    def factory(c):
        model = build_model(c)
        conv = model.cell.blocks[0].conv1   # a convolution of the equilibrium map f
        conv.register_forward_hook(lambda mod, args, out: seen.append((mod.training, out.dtype)))
        return model

    summary = run_training(cfg, device="cpu", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                           model_factory=factory, print_fn=lambda s: None)
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}    # the training forward passes
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # validation: fp32
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    records = ckpt["history"]
    assert summary["epochs"] == 3 and records[-1]["train_loss"] < records[0]["train_loss"]
    assert ckpt["train_config"]["amp"] == "bf16"
    # the bound the run recorded is the fp32 bound of its final weights, computed outside any autocast
    model = build_model(cfg)
    model.load_state_dict(ckpt["model_state"])
    assert records[-1]["lipschitz_bound"] == certified_bound(model, training=True)
    assert records[-1]["lipschitz_bound_eval"] == certified_bound(model, training=False)
    assert records[-1]["certified"]
    # and so is the bound from verified operator norms; every estimate was within its margin
    assert records[-1]["lipschitz_bound_verified"] == certified_bound(model, training=True, verified=True)
    assert records[-1]["lipschitz_bound_eval_verified"] == certified_bound(model, training=False, verified=True)
    assert records[-1]["lipschitz_bound_verified"] <= records[-1]["lipschitz_bound"]


def _cli(tmp_path, *extra):
    return main(["train", "--data", str(tmp_path / "d"), "--epochs", "2", "--batch-size", "10", "--val-fraction",
                 "0.25", "--lr", "1e-2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}".replace(" ", ""))], *extra])


def test_resume_keeps_the_runs_amp(tmp_path, monkeypatch, capsys):
    _data(tmp_path)
    assert _cli(tmp_path, "--amp", "bf16", "--out", str(tmp_path / "full")) == 0
    monkeypatch.setattr(trainer_module, "commit_epoch", _stop_after_first(trainer_module.commit_epoch))
    assert _cli(tmp_path, "--amp", "bf16", "--out", str(tmp_path / "split")) == 130
    monkeypatch.undo()
    assert _cli(tmp_path, "--resume", "--out", str(tmp_path / "split"), "--amp", "off") == 2
    assert "amp='off' (checkpoint: 'bf16')" in capsys.readouterr().err
    assert _cli(tmp_path, "--resume", "--out", str(tmp_path / "split")) == 0   # no --amp: the checkpoint's
    assert compare_runs(tmp_path / "full", tmp_path / "split") == []


def test_a_checkpoint_from_before_amp_resumes_in_fp32(tmp_path, monkeypatch):
    """last.pt files written before this setting existed (the runs in progress) have no train_config['amp']."""
    cfg = _data(tmp_path).replace(epochs=2)
    monkeypatch.setattr(trainer_module, "commit_epoch", _stop_after_first(trainer_module.commit_epoch))
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, device="cpu", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                     print_fn=lambda s: None)
    monkeypatch.undo()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    del ckpt["train_config"]["amp"]
    torch.save(ckpt, tmp_path / "old.pt")
    summary = run_training(cfg, device="cpu", out_dir=tmp_path / "fork", cache_dir=tmp_path / "cache",
                           resume=tmp_path / "old.pt", progress=False, print_fn=lambda s: None)
    assert summary["epochs"] == 2
    assert load_checkpoint(tmp_path / "fork" / "last.pt")["train_config"]["amp"] == "off"


def _stop_after_first(commit):
    def commit_then_stop(run_dir, state):
        commit(run_dir, state)
        raise KeyboardInterrupt
    return commit_then_stop
