"""``lmdeq train --config FILE`` (issue 27 item 4): YAML, TOML and JSON files of train flags, the command line over
the file, one-line errors naming the key and the file, and the run directory's config.json that trains the same run
again."""
import argparse
import json
import sys

import pytest
import torch
from train_helpers import write_image_folder

from lmdeq.app.train.arguments import TRAIN_DEFAULTS, train_parser
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.train.cli import config_from_args, main, resolve_train_args
from lmdeq.app.train.config_file import file_arguments
from lmdeq.app.train.rundir import TIMING_KEYS, compare_runs
from lmdeq.errors import ConfigError

CLASSES10 = tuple(f"k{i}" for i in range(10))

YAML = """\
data: images
epochs: 3
batch_size: 16
lr: 1e-3            # a string in YAML 1.1: read as on the command line
original: true
no-augment: true
log: csv,tensorboard
set:
  channels: [8, 8]
  dropout: 0.1
"""
TOML = """\
data = "images"
epochs = 3
batch-size = 16
lr = 0.001
original = true
no_augment = true
log = ["csv", "tensorboard"]

[set]
channels = [8, 8]
dropout = 0.1
"""
JSON = json.dumps({"data": "images", "epochs": 3, "batch-size": 16, "lr": 0.001, "original": True,
                   "no-augment": True, "log": ["csv", "tensorboard"], "set": {"channels": [8, 8], "dropout": 0.1}})


def _parse(argv):
    from lmdeq.app.cli import build_parser

    return resolve_train_args(build_parser().parse_args(["train", *argv]))


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize("name,text", [("run.yaml", YAML), ("run.yml", YAML), ("run.toml", TOML),
                                       ("run.json", JSON)])
def test_the_three_formats_mean_the_same_as_the_flags(tmp_path, name, text):
    from_file = _parse(["--config", _write(tmp_path, name, text)])
    from_flags = _parse(["--data", "images", "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--original",
                         "--no-augment", "--log", "csv,tensorboard", "--set", "channels=[8,8]", "--set", "dropout=0.1"])
    assert {k: v for k, v in vars(from_file).items() if k != "config"} == \
        {k: v for k, v in vars(from_flags).items() if k != "config"}
    cfg = config_from_args(from_file)
    assert (cfg.data, cfg.epochs, cfg.batch_size, cfg.lr, cfg.lipschitz, cfg.augment) == ("images", 3, 16, 1e-3,
                                                                                         False, False)
    assert cfg.model_overrides == {"channels": [8, 8], "dropout": 0.1}


def test_the_command_line_overrides_the_file(tmp_path):
    path = _write(tmp_path, "run.yaml", YAML)
    args = _parse(["--config", path, "--epochs", "5", "--lipschitz", "--dataset", "cifar10", "--set", "dropout=0.2",
                   "--log", "wandb"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.lipschitz, cfg.data, cfg.batch_size) == (5, True, "cifar10", 16)
    assert cfg.model_overrides == {"channels": [8, 8], "dropout": 0.2}   # --set replaces the file's key only
    assert args.log == ["wandb"] and args.augment is False
    # flags not given anywhere keep their defaults
    assert (args.device, args.workers, args.bound_every, args.checkpoint_every) == ("auto", 0, 50, 0)
    # a false value is the flag's opposite
    args = _parse(["--config", _write(tmp_path, "f.yaml", "original: false\nno-augment: false\nstrict: false\n")])
    assert (args.lipschitz, args.augment, args.strict) == (True, True, False)


@pytest.mark.parametrize("text,needles", [
    ("epochs: 3\nbatchsize: 4\n", ["'batchsize' is not a train flag"]),
    ("epochs: ten\n", ["epochs: expected a positive integer, got 'ten'"]),
    ("epochs: 2.5\n", ["epochs: expected a positive integer"]),
    ("epochs: true\n", ["epochs must be a number or a string, got bool"]),
    ("lr: [1, 2]\n", ["lr must be a number or a string, got list"]),
    ("strict: 1\n", ["strict must be true or false, got int"]),
    ("set: [dropout]\n", ["set must be a mapping"]),
    ("amp: fp8\n", ["amp must be one of off, bf16"]),
    ("log: [csv, nope]\n", ["log: expected comma-separated loggers"]),
    ("config: other.yaml\n", ["'config' cannot be set inside a config file"]),
    ("data: a\ndataset: cifar10\n", ["'data' and 'dataset' cannot both be set"]),
    ("lipschitz: true\noriginal: true\n", ["'original' and 'lipschitz' set the same thing"]),
    ("batch-size: 4\nbatch_size: 8\n", ["'batch_size' and 'batch-size' set the same thing"]),
    ("- epochs\n", ["must hold a mapping of flag names to values, not a list"]),
    ("epochs: [3\n", ["is not valid YAML"]),
])
def test_a_bad_file_is_one_line_naming_the_key_and_the_file(tmp_path, capsys, text, needles):
    path = _write(tmp_path, "run.yaml", text)
    with pytest.raises(ConfigError) as err:
        _parse(["--config", path])
    assert f"config {path}" in str(err.value) or f"config: {path}" in str(err.value)
    assert "\n" not in str(err.value)
    for needle in needles:
        assert needle in str(err.value)
    assert main(["train", "--config", path]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmdeq train: error: config") and needles[0] in lines[0]


def test_unreadable_files_and_missing_packages(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is not a .yaml, .yml, .toml or .json file"):
        file_arguments(_write(tmp_path, "run.ini", "[x]"), train_parser())
    with pytest.raises(ConfigError, match=r"cannot read .*missing.yaml"):
        file_arguments(tmp_path / "missing.yaml", train_parser())
    with pytest.raises(ConfigError, match="is not valid TOML"):
        file_arguments(_write(tmp_path, "run.toml", "epochs = "), train_parser())
    monkeypatch.setitem(sys.modules, "yaml", None)   # as without PyYAML installed
    with pytest.raises(ConfigError, match="needs the PyYAML package.*pip install pyyaml"):
        file_arguments(_write(tmp_path, "run.yaml", "epochs: 3\n"), train_parser())
    assert file_arguments(_write(tmp_path, "run.json", '{"epochs": 3}'), train_parser()) == {"epochs": 3}


def test_the_file_keys_are_the_train_flags():
    """Every train flag has a default to fall back on when neither the command line nor a file sets it."""
    dests = {a.dest for a in train_parser()._actions if a.option_strings and a.dest != "help"}
    assert dests == set(TRAIN_DEFAULTS)
    assert isinstance(_parse([]), argparse.Namespace)


TINY = {"channels": [8, 8], "head_channels": [4, 8], "final_channels": 32, "num_groups": 4}


def test_config_json_trains_the_same_run_again(tmp_path, monkeypatch, capsys):
    """A tiny real run from a YAML file; its config.json, given back with another --out, trains the same run:
    identical weights, records and step logs (compare_runs)."""
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "d" / "train", per_class=4, classes=CLASSES10)
    (tmp_path / "run.yaml").write_text(
        "data: d\nepochs: 2\nbatch-size: 15\nval-fraction: 0.25\nno-progress: true\ndevice: cpu\ncache-dir: cache\n"
        "log: csv\ncheckpoint-every: 3\nset: " + json.dumps(TINY) + "\n")
    assert main(["train", "--config", "run.yaml", "--out", "runs/x", "--seed", "3"]) == 0
    resolved = json.loads((tmp_path / "runs" / "x" / "config.json").read_text())
    assert resolved["seed"] == 3 and resolved["out"] == "runs/x" and resolved["set"] == TINY
    assert resolved["checkpoint-every"] == 3 and resolved["log"] == ["csv"] and resolved["amp"] == "off"
    assert not {"config", "resume", "allow-data-change", "dataset"} & set(resolved)
    assert main(["train", "--config", "runs/x/config.json", "--out", "runs/y"]) == 0
    assert compare_runs(tmp_path / "runs" / "x", tmp_path / "runs" / "y") == []
    again = json.loads((tmp_path / "runs" / "y" / "config.json").read_text())
    assert again == {**resolved, "out": "runs/y"}
    capsys.readouterr()
    # resumed with the flags it last ran with, and extended: config.json records the restart, and still trains
    # the same run from scratch
    assert main(["train", "--config", "runs/x/config.json", "--resume", "--epochs", "3"]) == 0
    extended = json.loads((tmp_path / "runs" / "x" / "config.json").read_text())
    assert (extended["epochs"], extended["lr-restarts"]) == (3, [2])
    assert main(["train", "--config", "runs/x/config.json", "--out", "runs/z"]) == 0
    x, z = (load_checkpoint(tmp_path / "runs" / r / "last.pt") for r in ("x", "z"))
    assert all(torch.equal(x["model_state"][k], z["model_state"][k]) for k in x["model_state"])
    # the same records, but epoch 2's 'lr' (the lr of the step after it: min_lr where the 2-epoch run ended,
    # the new cycle's start in the run planned with its restart)
    assert x["history"][1]["lr"] == 1e-6 and z["history"][1]["lr"] == 1e-3
    untimed = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS | {"lr"}} for r in rs]  # noqa: E731
    assert untimed(x["history"]) == untimed(z["history"])
