"""The command line answers a documented error with one line naming the argument or file (items 7 and 8),
checks the model config before any data is read (9), warns about training on unconverged solves (11), and
runs the README's resume example (12). An unexpected exception keeps its traceback."""
import logging

import pytest
import torch
from train_helpers import write_image_folder

from lmdeq.app.cli import main
from lmdeq.errors import NonFiniteError
from lmdeq.app.train import TrainConfig, run_training
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.metrics import read_jsonl
from lmdeq.app.train.model import build_model

from tests.models.tiny import scale_weights_

CLASSES10 = tuple(f"k{i}" for i in range(10))
TINY = ["--set", "channels=[8,8]", "--set", "head_channels=[4,8]", "--set", "final_channels=32",
        "--set", "num_groups=4"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) >= 1, err
    assert ": error: " in lines[-1], err
    for needle in needles:
        assert needle in lines[-1], err
    return lines[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 1-epoch run of the tiny real MDEQ (the README's first command)."""
    root = tmp_path_factory.mktemp("cli")
    write_image_folder(root / "d" / "train", per_class=2, classes=CLASSES10)
    assert main(["train", "--data", str(root / "d"), "--epochs", "1", "--batch-size", "15", "--val-fraction", "0.25",
                 "--device", "cpu", "--cache-dir", str(root / "cache"), "--out", str(root / "small"), "--no-progress",
                 *TINY]) == 0
    return root


def test_readme_resume_example_extends_the_run(run_dir, capsys):
    """`lmdeq train --resume runs/small/last.pt --epochs 2` (refused before: 'epochs=2 (checkpoint: 1)')."""
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir / "small" / "last.pt"), "--epochs", "2", "--no-progress",
                 "--cache-dir", str(run_dir / "cache")]) == 0
    out = capsys.readouterr().out
    assert "extended to 2 epochs" in out and "summary: 2 epochs" in out
    assert [r["epoch"] for r in read_jsonl(run_dir / "small" / "metrics.jsonl")] == [1, 2]
    assert load_checkpoint(run_dir / "small" / "last.pt")["train_config"]["lr_restarts"] == [1]
    assert main(["eval", "--checkpoint", str(run_dir / "small" / "best.pt"), "--cache-dir", str(run_dir / "cache"),
                 "--no-progress"]) == 0


@pytest.mark.parametrize("argv,needles", [
    (["bench", "--batch", "0"], ["--batch", "positive integer"]),
    (["bench", "--batch", "-4"], ["--batch"]),
    (["bench", "--steps", "0"], ["--steps"]),
    (["bench", "--steps", "-1"], ["--steps"]),
    (["bench", "--warmup", "-1"], ["--warmup", "non-negative"]),
    (["bench", "solvers", "--repeats", "0"], ["--repeats"]),
    (["bench", "solvers", "--max-iter", "0"], ["--max-iter"]),
    (["bench", "--device", "tpu"], ["device: 'tpu'"]),
    (["bench", "--preset", "nope"], ["--preset 'nope' is not a preset"]),
    (["bench", "--methods", "x,lmdeq"], ["--methods must be"]),
    (["bench", "--weights", "{tmp}/missing.pt"], ["missing.pt does not exist"]),
    (["train", "--data", "{tmp}", "--set", "s=5", "--out", "{tmp}/r"], ["certified bound L", "is not < 1"]),
    (["train", "--data", "{tmp}", "--preset", "nope", "--out", "{tmp}/r"], ["unknown preset 'nope'"]),
    (["train", "--data", "{tmp}/data", "--cache-dir", "{tmp}/file", "--out", "{tmp}/r"], ["is a file, not a dir"]),
    (["eval", "--checkpoint", "{tmp}/missing.pt"], ["checkpoint: ", "does not exist"]),
])
def test_documented_errors_are_one_line(argv, needles, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    write_image_folder(tmp_path / "data" / "train", per_class=1, classes=CLASSES10)
    rc = None
    try:
        rc = main([a.format(tmp=tmp_path) for a in argv] + (["--no-progress"] if argv[0] != "bench" else []))
    except SystemExit as exc:  # argparse
        rc = exc.code
    assert rc == 2
    _one_line_error(capsys, *needles)


def _crafted(run_dir, tmp_path, name, change):
    ckpt = torch.load(run_dir / "small" / "best.pt", weights_only=True)
    torch.save(change(ckpt), tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("name,change,needles", [
    ("no-config.pt", lambda c: {k: v for k, v in c.items() if k != "train_config"}, ["lacks ['train_config']"]),
    ("shaped.pt", lambda c: {**c, "model_state": {k: v[..., :1].clone() if v.dim() == 4 else v
                                                  for k, v in c["model_state"].items()}}, ["do not fit the model"]),
    ("nan.pt", lambda c: {**c, "model_state": {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                                               for k, v in c["model_state"].items()}}, ["non-finite weights"]),
    ("bad-model-config.pt", lambda c: {**c, "model_config": {**c["model_config"], "s": -1.0}}, ["model_config"]),
])
@pytest.mark.parametrize("command", ["eval", "bench"])
def test_crafted_checkpoints_are_one_line_errors(run_dir, tmp_path, capsys, name, change, needles, command):
    path = _crafted(run_dir, tmp_path, name, change)
    argv = ["eval", "--checkpoint", path, "--no-progress"] if command == "eval" else ["bench", "--weights", path]
    assert main(argv) == 2
    _one_line_error(capsys, path, *needles)


def test_model_config_is_checked_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("the data was read before the model config was checked")

    monkeypatch.setattr("lmdeq.app.train.run.prepare_splits", no_data)
    for sets, needle in ((["dropuot=0.1"], "dropuot"), (["s=5"], "certified bound"), (["channels=[8]"], "channels")):
        argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress"]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 2
        _one_line_error(capsys, needle)
    assert not (tmp_path / "r").exists()


def test_an_unexpected_exception_keeps_its_traceback(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise KeyError("a bug in lmdeq")

    monkeypatch.setattr("lmdeq.app.train.run.prepare_splits", bug)
    with pytest.raises(KeyError, match="a bug in lmdeq"):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress", *TINY])


def test_a_head_of_another_width_than_the_classes(tmp_path, capsys):
    """The classes come from the data (the preset's num_classes is a default); a num_classes set explicitly that
    does not match is a one-line error."""
    write_image_folder(tmp_path / "d" / "train", per_class=2)  # 4 classes
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "auto"), "--cache-dir",
                 str(tmp_path / "c"), "--no-progress", "--epochs", "1", *TINY]) == 0
    assert "num_classes 4 from the data (preset cifar10-small has 10)" in capsys.readouterr().out
    from lmdeq.app.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "auto" / "last.pt")["model_config"]["num_classes"] == 4
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--cache-dir",
                 str(tmp_path / "c"), "--no-progress", "--set", "num_classes=10", *TINY]) == 2
    _one_line_error(capsys, "has 4 classes but the model has num_classes=10", "--set num_classes=4")
    write_image_folder(tmp_path / "one", per_class=2, classes=("airplane",))
    assert main(["train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "r"), "--cache-dir",
                 str(tmp_path / "c"), "--no-progress", *TINY]) == 2
    _one_line_error(capsys, "has 1 class ('airplane')")


def test_training_on_unconverged_solves_warns_every_epoch(tmp_path, caplog):
    write_image_folder(tmp_path / "d" / "train", per_class=2, classes=CLASSES10)
    cfg = TrainConfig(data=str(tmp_path / "d"), epochs=2, batch_size=15, val_fraction=0.25,
                      model_overrides={"channels": [8, 8], "head_channels": [4, 8], "final_channels": 32,
                                       "num_groups": 4, "s": 5.0, "f_max_iter": 2, "b_max_iter": 2})
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        run_training(cfg, device="cpu", out_dir=tmp_path / "r", cache_dir=tmp_path / "c", progress=False,
                     print_fn=lambda s: None)
    warned = [r.getMessage() for r in caplog.records if "did not reach their tolerance" in r.getMessage()]
    assert [w.split(":")[0] for w in warned] == ["epoch 1", "epoch 2"] and "100%" in warned[0]
    assert [r["unconverged_steps"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1.0, 1.0]
    caplog.clear()
    ok = cfg.replace(model_overrides={k: v for k, v in cfg.model_overrides.items()
                                      if k not in ("s", "f_max_iter", "b_max_iter")})
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        run_training(ok, device="cpu", out_dir=tmp_path / "ok", cache_dir=tmp_path / "c", progress=False,
                     print_fn=lambda s: None)
    assert "did not reach" not in caplog.text
    assert [r["unconverged_steps"] for r in read_jsonl(tmp_path / "ok" / "metrics.jsonl")] == [0.0, 0.0]


def test_norm_estimates_that_fall_short_are_caught_by_the_verified_bound(tmp_path, caplog):
    """A model whose power iteration under-estimates every conv norm 100-fold (as after an optimiser step too large
    for the warm refresh): its certified L < 1 is wrong, and the verified bound of each epoch says so."""
    write_image_folder(tmp_path / "d" / "train", per_class=2, classes=CLASSES10)
    cfg = TrainConfig(data=str(tmp_path / "d"), epochs=2, batch_size=15, val_fraction=0.25,
                      model_overrides={"channels": [8, 8], "head_channels": [4, 8], "final_channels": 32,
                                       "num_groups": 4, "f_max_iter": 30, "b_max_iter": 30})

    def short_estimates(c):
        model = build_model(c)
        scale_weights_(model, conv_factor=3.0, gamma_factor=1.0)   # above the caps: the unscaled ones are too large
        refresh = model.constraint_step

        def refresh_short(*args, **kwargs):
            refresh(*args, **kwargs)
            with torch.no_grad():
                for conv in model.cell.convs():
                    conv.sigma.mul_(0.01)
        model.constraint_step = refresh_short
        return model

    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        run_training(cfg, device="cpu", out_dir=tmp_path / "r", cache_dir=tmp_path / "c", progress=False,
                     model_factory=short_estimates, print_fn=lambda s: None)
    records = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert all(r["certified"] and r["lipschitz_bound_verified"] >= 1.0 for r in records), records
    warned = [r.getMessage() for r in caplog.records if "fell short" in r.getMessage()]
    assert [w.split(":")[0] for w in warned] == ["epoch 1", "epoch 2"] and "--set power_iters=" in warned[0]


def test_non_finite_images_and_logits_are_errors(tmp_path):
    """NaN input images (the model's checked forward solve), and a model whose logits are NaN (evaluate)."""
    from lmdeq.models import mdeq
    from lmdeq.app.train.evaluate import evaluate
    from lmdeq.app.data.sources import load_source

    model = mdeq("cifar10-small", channels=[8, 8], head_channels=[4, 8], final_channels=32, num_groups=4)
    x = torch.randn(3, 3, 32, 32)
    x[1, 2, 3, 4] = float("inf")
    with pytest.raises(NonFiniteError, match="non-finite input images or weights"):
        model(x)

    class NaNLogits(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    data = load_source(str(write_image_folder(tmp_path / "d", per_class=2)), tmp_path / "c").train
    with pytest.raises(NonFiniteError, match="NaN/Inf logits on batch 1"):
        evaluate(NaNLogits(), data, 3, torch.device("cpu"))
