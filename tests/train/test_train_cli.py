"""`lmdeq train` / `lmdeq eval` through argparse: flag parsing, clear errors, and a tiny real-model run."""
import argparse
import json
import urllib.error

import pytest
import torch
from train_helpers import write_image_folder

from lmdeq.app.train import trainer as trainer_module
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.cli import config_from_args, main, parse_override, parse_value, register
from lmdeq.app.train.metrics import read_jsonl

TINY = ["--set", "channels=[8,8]", "--set", "head_channels=[4,8]", "--set", "final_channels=32",
        "--set", "num_groups=4"]
CLASSES10 = tuple(f"k{i}" for i in range(10))


def _parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_parse_value():
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("0.25") == 0.25 and parse_value("1e-3") == 1e-3
    assert parse_value("[8, 8]") == [8, 8] and parse_value('{"m": 6}') == {"m": 6}
    assert parse_value("anderson") == "anderson" and parse_value("") == ""
    with pytest.raises(argparse.ArgumentTypeError, match="not valid JSON"):
        parse_value("[8,")
    assert parse_override(" dropout = 0.1 ") == ("dropout", 0.1)
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_override("dropout")


def test_config_from_flags_defaults_and_resume_merge():
    args = _parse(["train", "--data", "d", "--epochs", "3", "--original", "--set", "dropout=0.1"])
    cfg = config_from_args(args)
    assert (cfg.data, cfg.epochs, cfg.lipschitz, cfg.lr, cfg.batch_size) == ("d", 3, False, 1e-3, 128)
    assert cfg.model_overrides == {"dropout": 0.1}
    saved = cfg.replace(lr=5e-4, seed=7).to_dict()
    resumed = config_from_args(_parse(["train", "--resume", "--workers", "1"]), saved)
    assert resumed.to_dict() == saved  # flags left out keep the checkpoint's values
    assert config_from_args(_parse(["train", "--dataset", "cifar10"])).data == "cifar10"
    with pytest.raises(ValueError, match=r"--set given more than once for \['dropout'\]"):
        config_from_args(_parse(["train", "--set", "dropout=0.1", "--set", "dropout=0.2"]))


@pytest.mark.parametrize("argv,message", [
    (["train", "--epochs", "0"], "expected a positive integer"),
    (["train", "--workers", "-1"], "expected a non-negative integer"),
    (["train", "--lr", "fast"], "argument --lr: expected a positive number"),
    (["train", "--val-fraction", "1.5"], "argument --val-fraction: expected a fraction number in [0, 1)"),
    (["train", "--data", "x", "--dataset", "cifar10"], "not allowed with argument"),
    (["train", "--lipschitz", "--original"], "not allowed with argument"),
    (["eval"], "--checkpoint"),
])
def test_bad_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--data", "{tmp}/missing", "--out", "{tmp}/run"], "does not exist"),
    (["--resume"], "--resume without a path needs --out"),
    (["--resume", "{tmp}/missing.pt"], "checkpoint: "),
    (["--data", "{tmp}", "--device", "tpu", "--out", "{tmp}/run"], "device: 'tpu'"),
])
def test_bad_values_give_clear_errors(argv, message, tmp_path, capsys):
    assert main(["train", "--no-progress"] + [a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_offline_download_is_a_clear_error(tmp_path, capsys, monkeypatch):
    class Offline:
        def __init__(self, *a, **k):
            raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", Offline)
    rc = main(["train", "--dataset", "cifar10", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "run"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "could not load or download torchvision CIFAR-10" in err and "--data" in err


def test_unknown_model_override_is_an_error(tmp_path, capsys):
    write_image_folder(tmp_path / "d" / "train", per_class=2, classes=CLASSES10)
    rc = main(["train", "--data", str(tmp_path / "d"), "--set", "dropuot=0.1", "--cache-dir", str(tmp_path / "c"),
               "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2 and "dropuot" in capsys.readouterr().err


def _train(tmp_path, *extra):
    return main(["train", "--data", str(tmp_path / "d"), "--epochs", "2", "--batch-size", "20",
                 "--val-fraction", "0.25", "--seed", "3", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                 *TINY, *extra])


def test_train_resume_and_eval_with_the_lipschitz_mdeq(tmp_path, capsys, monkeypatch):
    """The real model through the CLI: progress and metrics, a certified bound, an exact resume, eval."""
    write_image_folder(tmp_path / "d" / "train", per_class=8, classes=CLASSES10)
    assert _train(tmp_path, "--out", str(tmp_path / "full")) == 0
    out = capsys.readouterr()
    for key in ("loss=", "acc=", "f_nstep=", "f_res=", "b_nstep=", "b_res=", "L="):
        assert key in out.err  # the progress bar
    summary = [line for line in out.out.splitlines() if line.startswith("summary:")]
    assert len(summary) == 1 and "(L < 1: contraction certified)" in summary[0]
    records = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "train_time_s", "val_time_s", "f_nstep",
                "f_residual", "b_nstep", "b_residual", "lipschitz_bound", "lr"):
        assert records[-1][key] is not None, key
    assert 0 < records[-1]["lipschitz_bound"] < 1 and records[-1]["certified"]

    # interrupted right after epoch 1's commit, then resumed: identical to the full run
    real_commit = trainer_module.commit_epoch

    def commit_then_stop(run_dir, state):
        real_commit(run_dir, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "commit_epoch", commit_then_stop)
    assert _train(tmp_path, "--out", str(tmp_path / "split"), "--no-progress") == 130
    err = capsys.readouterr().err
    assert f"interrupted; {tmp_path / 'split' / 'last.pt'} holds the last completed epoch" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert _train(tmp_path, "--out", str(tmp_path / "split"), "--no-progress", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    split = load_checkpoint(tmp_path / "split" / "last.pt")["model_state"]
    assert [k for k in full if not torch.equal(full[k], split[k])] == []
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))} for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "split" / "metrics.jsonl")) == strip(records)
    assert _train(tmp_path, "--out", str(tmp_path / "split"), "--no-progress", "--resume", "--lr", "0.01") == 2
    assert "lr=0.01 (checkpoint: 0.001)" in capsys.readouterr().err

    assert main(["eval", "--checkpoint", str(tmp_path / "full" / "last.pt"), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val (holdout)" and result["n"] == 20
    assert result["acc"] == records[-1]["val_acc"]
    assert 0 < result["lipschitz_bound"] < 1 and result["certified"]
    assert main(["eval", "--checkpoint", str(tmp_path / "full" / "last.pt"), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--split", "all", "--no-progress"]) == 0
    assert "on all: 80 images" in capsys.readouterr().out
