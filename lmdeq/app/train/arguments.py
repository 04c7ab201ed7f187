"""The flags of ``lmdeq train`` and ``lmdeq eval``, and their defaults.

The ``train`` parser leaves out every flag not given (``argparse.SUPPRESS``): the command line then says exactly
what the user set, which :mod:`lmdeq.app.train.cli` lays over a ``--config`` file (:mod:`lmdeq.app.train.
config_file`), which lies over the defaults: :data:`TRAIN_DEFAULTS` for the runtime flags, and for the flags that
set the training config (:data:`CONFIG_FLAGS`) the checkpoint's value when resuming, else the defaults of
:class:`~lmdeq.app.train.config.TrainConfig`. :func:`train_parser` builds the parser alone (what a config file's
keys are checked against).
"""
from __future__ import annotations

import argparse
import json

from ..argtypes import COUNT_MAX, float_in, non_negative_float, output_dir, path, positive_float, seed, text
from ..argtypes import non_negative_int, positive_int
from .config import AMP_MODES
from .distributed import BACKENDS
from .loggers import log_names

# Flags whose destination is the TrainConfig field of the same name.
CONFIG_FLAGS = ("preset", "lipschitz", "data", "val_data", "val_fraction", "limit_train", "limit_val", "channels",
                "image_size", "epochs", "batch_size", "eval_batch_size", "lr", "min_lr", "weight_decay", "grad_clip",
                "augment", "seed", "lr_restarts", "amp")
# The runtime flags' defaults (shared with eval) and the train-only ones'.
RUNTIME_DEFAULTS = {"device": "auto", "workers": 0, "cache_dir": None, "strict": False, "progress": True,
                    "dist_backend": "auto"}
TRAIN_DEFAULTS = {**RUNTIME_DEFAULTS, "overrides": [], "dataset": None, "out": None, "resume": None,
                  "bound_every": 50, "allow_data_change": False, "sync_bn": False, "log": [], "checkpoint_every": 0,
                  "config": None, **{k: None for k in CONFIG_FLAGS}}


def parse_value(text: str):
    """'true'/'false' -> bool, 'none' -> None, '[...]'/'{...}' -> JSON, then int, then float, else the string."""
    low = text.lower()
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({err})") from None
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), parse_value(value.strip())


def epoch_list(value: str) -> list[int]:
    """An argparse type: comma-separated epoch counts (each a positive integer), e.g. '30,40'."""
    parts = value.split(",")
    try:
        epochs = [int(p.strip()) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {value!r}") from None
    if any(not 1 <= e <= COUNT_MAX for e in epochs):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {value!r}")
    return epochs


def _add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=text("a device"), help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--workers", type=non_negative_int, help="data loader worker processes (default: 0)")
    p.add_argument("--cache-dir", type=path, help="where archives are extracted and images decoded "
                                       "(default: $LMDEQ_CACHE/datasets or ~/.cache/lmdeq/datasets)")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first image file that cannot be decoded (default: skip such files and report "
                        "how many, with the first few paths)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--dist-backend", choices=BACKENDS,
                   help="under torchrun: the torch.distributed backend (default: auto = nccl on CUDA, gloo on the CPU)")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The train flags, none with a default (give ``p`` ``argument_default=argparse.SUPPRESS``)."""
    p.add_argument("--config", type=path, metavar="FILE",
                   help="read flags from a YAML (.yaml/.yml, needs PyYAML), TOML (.toml) or JSON (.json) file: keys "
                        "are the flag names (dashes or underscores), 'set' a mapping of --set overrides; flags given "
                        "here override it. A run directory's config.json reproduces its run")
    m = p.add_argument_group("model")
    m.add_argument("--preset", type=text("a preset name"), help="model preset of lmdeq.models.PRESETS (default: cifar10-small)")
    variant = m.add_mutually_exclusive_group()
    variant.add_argument("--lipschitz", dest="lipschitz", action="store_const", const=True,
                         help="the Lipschitz MDEQ with a certified contraction bound (default)")
    variant.add_argument("--original", dest="lipschitz", action="store_const", const=False,
                         help="the original, unconstrained MDEQ")
    m.add_argument("--set", dest="overrides", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="override a model setting (repeatable; values: true/false, none, int, float, "
                        "JSON list/dict, else string), e.g. --set dropout=0.1 --set channels=[16,16]")
    d = p.add_argument_group("data")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--data", type=path, help="ImageFolder directory, .tar.gz of one, torchvision:<root> (CIFAR-10, "
                     "downloaded when missing), or <Name>:<root> of a torchvision data set on disk (CIFAR10, CIFAR100, "
                     "SVHN, MNIST, FashionMNIST, STL10); a relative path is relative to the current directory")
    src.add_argument("--dataset", choices=["cifar10"],
                     help="torchvision's CIFAR-10 in the cache directory, downloaded when missing")
    d.add_argument("--val-data", type=path, help="validation images (default: the data's test split, else a hold-out)")
    d.add_argument("--val-fraction", type=float_in(0.0, 1.0, high_open=True, kind="a fraction"),
                   help="share of training images held out for validation when there is no test split (default: 0.1; "
                        "0: none)")
    d.add_argument("--limit-train", type=positive_int, help="train on a stratified subset of this many images")
    d.add_argument("--limit-val", type=positive_int, help="validate on a stratified subset of this many images")
    d.add_argument("--channels", type=int, choices=(1, 3),
                   help="convert the images to this many channels (3 -> 1: luma; 1 -> 3: repeated), e.g. 1 for a "
                        "1-channel preset on RGB data")
    d.add_argument("--image-size", type=positive_int,
                   help="resize the images to this square size once after decoding (bilinear, antialiased), e.g. "
                        "64 for tiny-imagenet-small on 32x32 data")
    d.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="no random crop / flip")
    o = p.add_argument_group("optimisation (defaults: the authors' CIFAR-10 settings)")
    o.add_argument("--epochs", type=positive_int,
                   help="(default: 50; when resuming, more than the run planned extends it: the added epochs run "
                        "a new cosine cycle from --lr to --min-lr)")
    o.add_argument("--batch-size", type=positive_int, help="(default: 128)")
    o.add_argument("--eval-batch-size", type=positive_int, help="(default: 256)")
    o.add_argument("--lr", type=positive_float, help="Adam learning rate, start of the per-step cosine (default: 1e-3)")
    o.add_argument("--min-lr", type=non_negative_float, help="learning rate at the end of the cosine (default: 1e-6)")
    o.add_argument("--lr-restarts", type=epoch_list, metavar="E1,E2,...",
                   help="epochs after which the cosine starts a new cycle from --lr (default: none; a run extended "
                        "with --resume --epochs gets its old epoch count here)")
    o.add_argument("--weight-decay", type=non_negative_float, help="(default: 0)")
    o.add_argument("--grad-clip", type=non_negative_float, help="max global gradient norm, 0: off (default: 0)")
    o.add_argument("--seed", type=seed, help="seeds init, data split and order (default: 0)")
    o.add_argument("--amp", choices=AMP_MODES,
                   help="bf16: the training forward pass under bf16 autocast (CPU or CUDA); the loss, optimiser step, "
                        "constraint upkeep and certified bound stay fp32, validation runs in fp32 (default: off)")
    r = p.add_argument_group("run")
    r.add_argument("--out", type=output_dir, help="run directory for metrics.jsonl, last.pt, best.pt, config.json "
                                 "(default: runs/<preset>-<variant>-seed<seed>, or the --resume file's directory)")
    r.add_argument("--resume", nargs="?", const=True, type=path, metavar="CHECKPOINT",
                   help="continue a run exactly: from CHECKPOINT (a last.pt, or a run directory), or from "
                        "<out>/last.pt when no path is given. A checkpoint other than its directory's last.pt "
                        "continues only into a new --out (a fork)")
    r.add_argument("--checkpoint-every", type=non_negative_int, metavar="N",
                   help="also write last.pt every N optimiser steps within an epoch (atomically, as at an epoch "
                        "end); --resume continues from there exactly (default: 0, at epoch ends only)")
    r.add_argument("--log", type=log_names, action="extend", metavar="NAMES",
                   help="logs beside metrics.jsonl (repeatable or comma-separated): csv (steps.csv, epochs.csv), "
                        "tensorboard (needs the tensorboard package), wandb (needs wandb); jsonl is always on")
    r.add_argument("--bound-every", type=positive_int,
                   help="recompute the certified bound L every this many steps (default: 50)")
    r.add_argument("--allow-data-change", action="store_true",
                   help="--resume on other images than the run was trained on (last.pt records their digests; "
                        "without this flag a resume on other data is an error naming what changed)")
    r.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the whole global batch (torch's SyncBatchNorm, CUDA "
                        "only; default: each process normalises with its shard's statistics)")
    _add_runtime_arguments(p)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=path, required=True, help="a last.pt / best.pt written by lmdeq train")
    p.add_argument("--data", type=path,
                   help="images to evaluate on (default: the data the checkpoint's train_config records, a relative "
                        "path taken relative to the current directory)")
    p.add_argument("--split", choices=["val", "train", "all"], default="val",
                   help="val: the run's validation images (test split or its hold-out); train: its training "
                        "images; all: every image of --data (default: val)")
    p.add_argument("--limit", type=positive_int, help="evaluate a stratified subset of this many images")
    p.add_argument("--batch-size", type=positive_int, help="(default: the checkpoint's eval batch size)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="evaluate --split val/train although the images differ from those the run recorded (their "
                        "digests); without it that is an error")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _add_runtime_arguments(p)
    p.set_defaults(**RUNTIME_DEFAULTS)


def train_parser(**kwargs) -> argparse.ArgumentParser:
    """A parser of the train flags alone, each left out of the namespace unless given."""
    p = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, **kwargs)
    add_train_arguments(p)
    return p
