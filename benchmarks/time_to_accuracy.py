"""Wall-clock time for (a) original MDEQ, (b) the authors' Lipschitz MDEQ and (c) lmdeq's fast path to
reach a validation accuracy on CIFAR-10 under ``lmdeq train`` (same data, seed, schedule and batch).

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-train-jpeg.tar.gz \
        --target 0.80 --epochs 50 [--preset cifar10-large] [--methods original,authors,lmdeq] [--save-runs DIR]

Time counts training and validation wall-clock (data decoding, cached once beforehand, excluded). A method
that has not reached the target after ``--epochs`` is reported as not reached, with its best accuracy.
Writes benchmarks/results/time_to_accuracy-<device>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from lmdeq.allocator import configure_process
from lmdeq.bench.device import device_slug, environment
from lmdeq.bench.report import markdown_table
from lmdeq.bench.speedup import LABELS, METHODS, method_config
from lmdeq.train.config import TrainConfig
from lmdeq.train.data import prepare_splits
from lmdeq.train.run import run_training


class _Reached(Exception):
    pass


def time_to_accuracy(method: str, args) -> dict:
    overrides = method_config(method, args.preset, solve_mode=args.solve_mode)
    overrides.pop("preset")
    lipschitz = overrides.pop("lipschitz")
    cfg = TrainConfig(preset=args.preset, lipschitz=lipschitz, model_overrides=overrides, data=args.data,
                      val_fraction=args.val_fraction, limit_train=args.limit_train, limit_val=args.limit_val,
                      epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    history = []
    elapsed = [0.0]

    def on_epoch_end(rec):
        elapsed[0] += rec["train_time_s"] + rec.get("val_time_s", 0.0)
        history.append({"epoch": rec["epoch"], "val_acc": rec.get("val_acc"), "elapsed_s": elapsed[0],
                        "f_nstep": rec.get("f_nstep"), "b_nstep": rec.get("b_nstep")})
        if rec.get("val_acc") is not None and rec["val_acc"] >= args.target:
            raise _Reached()

    reached = False
    out_dir = os.path.join(args.save_runs, method) if args.save_runs else None
    try:
        run_training(cfg, device=args.device, workers=args.workers, progress=not args.no_progress,
                     on_epoch_end=on_epoch_end, print_fn=lambda m: print(m, file=sys.stderr, flush=True),
                     out_dir=out_dir)
    except _Reached:
        reached = True
    best = max((h["val_acc"] for h in history if h["val_acc"] is not None), default=None)
    return {"method": method, "label": LABELS[method], "reached": reached, "run_dir": out_dir,
            "seconds": history[-1]["elapsed_s"] if reached else None,
            "epochs": history[-1]["epoch"] if history else 0, "best_val_acc": best, "history": history}


def main(argv=None) -> int:
    configure_process()   # lmdeq's own process: pinned allocator unless LMDEQ_TUNE_ALLOCATOR=0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 source (as for lmdeq train --data)")
    p.add_argument("--target", type=float, default=0.80, help="validation accuracy to reach (default %(default)s)")
    p.add_argument("--preset", default=None, help="default: cifar10-large on GPU, cifar10-small on CPU")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-val", type=int, default=None)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tag", default="", help="suffix for the result file name")
    p.add_argument("--save-runs", default=None, metavar="DIR",
                   help="keep each method's run (checkpoints, metrics) in DIR/<method> (for lmdeq bench --weights)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    args.preset = args.preset or ("cifar10-large" if device.type == "cuda" else "cifar10-small")
    args.solve_mode = "apriori" if device.type == "cuda" else "checked"  # as `lmdeq bench` (c)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    # Decode (and cache) the data once, so no method pays for it.
    prepare_splits(TrainConfig(data=args.data, val_fraction=args.val_fraction, limit_train=args.limit_train,
                               limit_val=args.limit_val, seed=args.seed), progress=not args.no_progress)
    result = {"benchmark": "time_to_accuracy", "env": environment(device), "preset": args.preset,
              "target": args.target, "data": args.data, "val_fraction": args.val_fraction,
              "limit_train": args.limit_train, "limit_val": args.limit_val, "epochs_max": args.epochs,
              "batch_size": args.batch_size, "rows": []}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"time_to_accuracy-{device_slug(device)}{args.tag}.json")
    for m in methods:  # the JSON is rewritten after each method, so a run cut short keeps what finished
        result["rows"].append(time_to_accuracy(m, args))
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)
    rows = result["rows"]
    print(f"Device: {result['env']['device']}; preset {args.preset}; target val acc {args.target}\n")
    print(markdown_table(rows, ["label", "reached", "seconds", "epochs", "best_val_acc"],
                         ["method", "reached", "seconds", "epochs", "best val acc"]))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
