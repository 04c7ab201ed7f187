"""``lmdeq bench tta`` / ``python benchmarks/time_to_accuracy.py``: time to accuracy on CIFAR-10.

Trains (a) the original MDEQ (its recipe's unrolled warm-up scaled to the schedule, then Broyden DEQ),
(b) the authors' Lipschitz MDEQ as released and (c) lmdeq's fast path, plus the certificate-cost variants
((c)'s architecture with no conv cap, and with (b)'s released cap), on the same data, seed, schedule
(Adam, per-step cosine, the authors' settings) and batch size, interleaved round by round in one process
(:mod:`lmdeq.app.bench.tta_run`), every method from the same initial weights, and records validation
accuracy against training seconds and steps. ``--methods`` may add ``original_jr``, baseline (a-JR): the original
MDEQ with the released Jacobian regularisation recipe (its stop step at 45% of the schedule; each point records
how many of its steps so far were JR steps).

Protocols (every flag overrides its protocol's value):

* ``cpu`` (default without a GPU): cifar10-small, batch 64, a stratified 10,000-image training subset and
  2,000 validation images held out of the given data, 2 epochs for every method. On a quiet 2-core
  machine that is about 90 minutes in all: per epoch about 30 min of training ((a) ~17, (b) ~4, (c) ~3,
  the two variants ~4 each) and 17 min of evaluation (8 passes over 2,000 images; (a) ~95 s a pass, the
  others ~10 s); the run prints its own estimate after every round;
* ``gpu`` (default with one): cifar10-large, batch 128, the full training split (10% held out), a
  30-epoch schedule with a 12-minute training budget per method.

Writes ``<out>/time_to_accuracy-<device><tag>.json`` (settings, environment and load average at start and
end, every point, the summary and the targets), ``.png`` (the curves, with the load warning when the load average
exceeded the thread count) and ``.md`` (the README tables), and prints the tables. ``--out`` defaults to a new run
folder outside the checkout (:mod:`lmdeq.app.bench.outputs`); result files that exist there already are refused
before any work unless ``--force`` (or ``--resume``, which continues them). Progress: one line per evaluation point.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List

import torch

from ... import checks
from ...errors import ConfigError
from .. import argtypes
from ..argtypes import (file_tag, float_in, name_list, non_negative_int, output_dir, path, positive_float, positive_int,
                        seed, text)
from .outputs import add_out_arguments, result_dir

__all__ = ["PROTOCOLS", "add_arguments", "build_parser", "run", "main"]

PROTOCOLS = {
    "cpu": dict(preset="cifar10-small", batch=64, limit_train=10000, limit_val=2000, epochs=2, budget_minutes=None),
    "gpu": dict(preset="cifar10-large", batch=128, limit_train=None, limit_val=None, epochs=30, budget_minutes=12.0),
}
DEFAULT_METHODS = "original,original_jr,authors,lmdeq"   # (a), (a-JR) the paper's own baseline, (b), (c)
DEFAULT_VARIANTS = "lmdeq_nocap,lmdeq_released_cap"
DEFAULT_TARGETS = (0.3, 0.4, 0.5, 0.6)


def _accuracies(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated accuracies in (0, 1), got {text!r}") from None
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated accuracies in (0, 1), got {text!r}")
    return values


def add_shared_arguments(p) -> None:
    """The flags ``lmdeq bench`` already defines (added here for the standalone script only)."""
    p.add_argument("--data", type=path, default=None, help="CIFAR-10 source, as for lmdeq train --data (required)")
    p.add_argument("--preset", type=argtypes.preset, default=None, help="model preset (default: the protocol's)")
    p.add_argument("--device", type=argtypes.device, default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (default: the protocol's, 64 CPU / 128 GPU)")
    p.add_argument("--methods", type=text("comma-separated methods"), default=DEFAULT_METHODS,
                   help="comma-separated: original, authors, lmdeq, original_jr (MDEQ + Jacobian reg.)")
    add_out_arguments(p, "tta")
    p.add_argument("--tag", type=file_tag, default="", help="suffix for result file names")


def _budgets(text: str) -> List[int]:
    """'2,3,4' -> [2, 3, 4]: distinct positive step counts."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(not t.isdigit() or not 1 <= int(t) <= 10_000 for t in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts from 1 to 10000, got {text!r}")
    return sorted({int(t) for t in items})


def _model_override(text: str):
    from ..train.cli import parse_override   # imported when used: lmdeq bench must not need the training stack

    return parse_override(text)


def add_arguments(p) -> None:
    """The time-to-accuracy flags (an argparse parser or argument group)."""
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                   help="tta: cpu (cifar10-small, 10,000 images, batch 64) or gpu (cifar10-large, full split, "
                        "batch 128, 12 min per method); default: gpu if CUDA is available")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="tta: epochs of the schedule, the same for every method (default: the protocol's)")
    p.add_argument("--budget-minutes", type=positive_float, default=None,
                   help="tta: stop a method once its training clock passes this (default: the protocol's)")
    p.add_argument("--evals-per-epoch", type=positive_int, default=8, help="tta: curve points per epoch (default: 8)")
    p.add_argument("--targets", type=_accuracies, default=None,
                   help="tta: accuracies to time, comma-separated (default: 0.3,0.4,0.5,0.6)")
    p.add_argument("--target", type=float_in(0.0, 1.0, True, True, "an accuracy"), action="append", default=None,
                   help="tta: one more accuracy to time (repeatable)")
    p.add_argument("--variants", type=name_list, default=DEFAULT_VARIANTS,
                   help="tta: certificate-cost variants to add, comma-separated, '' for none "
                        f"(default: {DEFAULT_VARIANTS})")
    p.add_argument("--budgets", type=_budgets, default=[], metavar="K,K,...",
                   help="tta: iteration budgets to add as methods: (c) with forward_budget = backward_budget = K, its "
                        "caps scaled so that the certified counts stay <= K throughout training (method lmdeq_budgetK)")
    p.add_argument("--limit-train", type=positive_int, default=None, help="tta: stratified training subset (default: protocol)")
    p.add_argument("--limit-val", type=positive_int, default=None, help="tta: stratified validation subset (default: protocol)")
    p.add_argument("--val-fraction", type=float_in(0.0, 1.0, high_open=True, kind="a fraction"), default=0.1,
                   help="tta: share held out for validation when the data has no test split (default: 0.1)")
    p.add_argument("--full-split", action="store_true", help="tta: no training / validation subsets")
    p.add_argument("--seed", type=seed, default=0, help="tta: seed of the init, split and data order (default: 0)")
    p.add_argument("--no-unrolled-warmup", dest="unrolled_warmup", action="store_false",
                   help="tta: (a) without its recipe's unrolled warm-up")
    p.add_argument("--model-set", dest="model_set", action="append", type=_model_override, default=[],
                   metavar="KEY=VALUE", help="tta: a model setting for every method (repeatable; e.g. smaller "
                                             "channels for a smoke run)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="tta: data decoding processes (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="tta: no progress bar while the data is decoded")
    p.add_argument("--resume", action="store_true",
                   help="tta: continue the run whose state <out>/time_to_accuracy-<device><tag>.state.pt holds (written "
                        "after every round; needs --out) with the same settings; the curves are the same as "
                        "uninterrupted")
    p.add_argument("--save-runs", type=output_dir, default=None, metavar="DIR",
                   help="tta: write each method's final weights (DIR/<method>/last.pt, for lmdeq bench --weights "
                        "and lmdeq eval) and its curve (DIR/<method>/metrics.jsonl)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="time_to_accuracy.py", description=__doc__.split("\n\n")[0])
    add_shared_arguments(p)
    add_arguments(p)
    return p


def _settings(args, device) -> Dict:
    """The protocol's values with the flags given on top; ValueError naming a bad flag."""
    protocol = args.protocol or ("gpu" if device.type == "cuda" else "cpu")
    base = PROTOCOLS[protocol]
    def given(value, default):
        return default if value is None else value

    s = {"protocol": protocol,
         "preset": given(args.preset, base["preset"]),
         "batch_size": given(args.batch, base["batch"]),
         "limit_train": None if args.full_split else given(args.limit_train, base["limit_train"]),
         "limit_val": None if args.full_split else given(args.limit_val, base["limit_val"]),
         "epochs": given(args.epochs, base["epochs"]),
         "budget_minutes": args.budget_minutes if args.budget_minutes is not None else base["budget_minutes"],
         "evals_per_epoch": args.evals_per_epoch, "val_fraction": args.val_fraction, "seed": args.seed,
         "targets": sorted(set((args.targets or list(DEFAULT_TARGETS)) + (args.target or [])))}
    for key, flag in (("batch_size", "--batch"), ("epochs", "--epochs"), ("evals_per_epoch", "--evals-per-epoch"),
                      ("limit_train", "--limit-train"), ("limit_val", "--limit-val")):
        if s[key] is not None:
            checks.integer(flag, s[key], 1)
    if s["budget_minutes"] is not None:
        checks.number("--budget-minutes", s["budget_minutes"], 0, low_open=True)
    for t in s["targets"]:
        checks.number("--target", t, 0, 1, low_open=True, high_open=True)
    s["methods"] = _method_names(args.methods, args.variants) + [f"lmdeq_budget{k}" for k in args.budgets]
    s["budgets"] = list(args.budgets)
    return s


def _method_names(methods: str, variants: str) -> List[str]:
    from .speedup import METHODS, VARIANTS

    names = [m.strip() for m in methods.split(",") if m.strip()]
    extra = [v.strip() for v in (variants or "").split(",") if v.strip()]
    bad = [m for m in names if m not in METHODS] + [v for v in extra if v not in VARIANTS]
    if bad or not names + extra:
        raise ValueError(f"--methods must be a subset of {','.join(METHODS)} and --variants of {','.join(VARIANTS)}, "
                         f"got {bad or 'none'}")
    return list(dict.fromkeys(names + extra))


def _specs(args, settings, total_steps: int, device) -> List:
    from ...models.presets import original_warmup_steps
    from .speedup import LABELS, method_config
    from ..flat_solves import model_arguments
    from .tta_run import MethodSpec

    warmup = original_warmup_steps(settings["preset"], total_steps) if args.unrolled_warmup else 0
    solve_mode = "apriori" if device.type == "cuda" else "checked"   # as lmdeq bench's fast path
    overrides = dict(args.model_set)
    specs = []
    budgets = {f"lmdeq_budget{k}": k for k in settings.get("budgets", [])}
    for name in settings["methods"]:
        base = "lmdeq" if name in budgets else name
        config = method_config(base, settings["preset"], solve_mode=solve_mode, unrolled_warmup_steps=warmup)
        if name in budgets:
            config.update(forward_budget=budgets[name], backward_budget=budgets[name])
        preset, lipschitz = config.pop("preset"), config.pop("lipschitz")
        config = dict(preset=preset, lipschitz=lipschitz, **model_arguments(preset, lipschitz, {**config, **overrides}))
        label = f"(c) budget k={budgets[name]}" if name in budgets else LABELS[name]
        specs.append(MethodSpec(name, label, config, channels_last=name.startswith("lmdeq")))
    return specs


def _write(path: str, result: Dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1)
    os.replace(tmp, path)


def _save_run(directory: str, run, cfg) -> None:
    from ..train.checkpoint import BEST, save_checkpoint
    from ..train.export import model_checkpoint

    os.makedirs(directory, exist_ok=True)
    final = run.points[-1]["val_acc"] if run.points else None
    save_checkpoint(os.path.join(directory, "last.pt"),
                    model_checkpoint(run.model, cfg, epoch=run.epoch, step=run.step, classes=run.train.classes,
                                     val_acc=final), BEST)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as fh:
        for p in run.points:
            fh.write(json.dumps(p) + "\n")


def _fail(err) -> None:
    """A documented error: one line on stderr and exit status 2, as every lmdeq command."""
    from ..command import one_line

    print(f"time to accuracy: error: {one_line(err) if isinstance(err, BaseException) else err}", file=sys.stderr,
          flush=True)
    raise SystemExit(2)


def _save_state(path: str, runs, settings: Dict, rounds: List[Dict]) -> None:
    """Every method's state after a round, atomically (a kill at any instant leaves the previous round's)."""
    from ..atomic import atomic_write_bytes
    from ..torch_files import torch_save_bytes

    atomic_write_bytes(path, torch_save_bytes({"settings": json.dumps(settings, sort_keys=True),
                                               "methods": [r.state_dict() for r in runs], "sittings": rounds}))


def _load_state(path: str, runs, settings: Dict) -> List[Dict]:
    """Restore the runs from :func:`_save_state`'s file; returns its sittings (ValueError naming a mismatch)."""
    from ..torch_files import load_failure_reason

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"--resume: no saved state at {path} (run without --resume first)") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is one clear line
        raise ValueError(f"--resume: cannot read {path}: {load_failure_reason(err)}") from None
    saved = json.loads(state["settings"])
    changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if changed:
        raise ValueError(f"--resume: the saved run at {path} has other settings: "
                         + ", ".join(f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed))
    by_name = {m["name"]: m for m in state["methods"]}
    for r in runs:
        r.load_state_dict(by_name[r.spec.name])
    return list(state["sittings"])


def run(args) -> int:
    """Run the benchmark from parsed arguments; returns the exit code."""
    from ...models import PRESETS
    from ...models.presets import input_shape
    from ..train.config import TrainConfig
    from ..data.run_data import prepare_splits
    from ..data.sources import DataUnavailableError
    from .device import device_slug, environment
    from .tta_report import figure, summarise, tables, targets
    from .tta_run import MethodRun, interval_bounds, run_interleaved, shared_init

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    from ..train.run import resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        _fail(f"--{err}")
    try:
        if not args.data:
            raise ValueError("--data is required (an ImageFolder directory, a .tar.gz of one, 'cifar10' or "
                             "'torchvision:<root>')")
        s = _settings(args, device)
        if args.resume and args.out is None:
            raise ValueError("--resume needs --out: the folder of the run to continue")
        stem_name = f"time_to_accuracy-{device_slug(device)}{args.tag}"
        out = result_dir(args.out, "tta", [stem_name + ext for ext in (".json", ".png", ".md", ".state.pt")],
                         args.force or args.resume)
        cfg = TrainConfig(preset=s["preset"], data=args.data, val_fraction=s["val_fraction"],
                          limit_train=s["limit_train"], limit_val=s["limit_val"], epochs=s["epochs"],
                          batch_size=s["batch_size"], seed=s["seed"])
        splits = prepare_splits(cfg, workers=args.workers, progress=not args.no_progress)
        if splits.val is None:
            raise ValueError("--val-fraction 0 and no test split: the benchmark needs validation images")
        shape = input_shape({**PRESETS[s["preset"]], **dict(args.model_set)})
        if tuple(splits.train.images.shape[1:]) != shape:
            raise ValueError(f"--data {args.data}: its images are {tuple(splits.train.images.shape[1:])} (C, H, W); "
                             f"preset {s['preset']} takes {shape} (choose the preset for this data, or pass "
                             "--model-set in_channels=... --model-set image_size=...)")
        steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
        specs = _specs(args, s, cfg.epochs * steps_per_epoch, device)
    except (ValueError, TypeError, FileNotFoundError, DataUnavailableError) as err:
        _fail(err)
    load_start = os.getloadavg()
    log(f"data: {splits.describe()}; {s['protocol']} protocol, {s['preset']}, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps, {len(interval_bounds(steps_per_epoch, s['evals_per_epoch']))} "
        f"points per epoch; load average {load_start[0]:.2f}")
    init = shared_init(s["preset"], cfg.seed, dict(args.model_set))
    runs = [MethodRun(spec, cfg, splits.train, splits.val, device, init=init) for spec in specs]
    for r in runs:
        warm = r.model.config.get("unrolled_warmup_steps", 0)
        log(f"  {r.spec.label}: {sum(p.numel() for p in r.model.parameters()):,} parameters"
            + (f", unrolled warm-up for the first {warm} steps ({r.model.config['unrolled_layers']} layers)" if warm else ""))
    stem = str(out / stem_name)
    result = {"benchmark": "time_to_accuracy", "settings": {**s, "data": args.data, "steps_per_epoch": steps_per_epoch,
                                                            "train_images": len(splits.train),
                                                            "val_images": len(splits.val)},
              "env": environment(device), "load_average_start": list(load_start), "methods": []}
    state_path = stem + ".state.pt"
    sittings: List[Dict] = []
    if args.resume:
        try:
            sittings = _load_state(state_path, runs, result["settings"])
        except ValueError as err:
            _fail(err)
        done = max(len(r.points) for r in runs)
        log(f"resumed from {state_path}: {done} rounds done in {len(sittings)} earlier sitting(s)")
    sittings.append({"start_round": max(len(r.points) for r in runs), "load_average_start": list(load_start),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    result["sittings"] = sittings
    started = time.perf_counter()
    wall_before = sum(s_.get("wall_s", 0.0) for s_ in sittings[:-1])

    def methods_json():
        return [{"method": r.spec.name, "label": r.spec.label, "config": r.model.config, "points": r.points}
                for r in runs]

    def on_point(r, p):
        log(f"[{time.perf_counter() - started:7.0f}s] {r.spec.label}: epoch {p['epoch']:.2f} step {p['step']}, "
            f"train {p['train_s']:.0f}s (+{p['interval_s']:.1f}), val acc {p['val_acc']:.4f} (eval {p['eval_s']:.1f}s), "
            f"f/b {p['f_nstep'] or 0:.1f}/{p['b_nstep'] or 0:.1f}{' unrolled' if p['unrolled'] else ''}")

    def on_round(done, total):
        elapsed = time.perf_counter() - started
        per_round = elapsed / max(1, done - sittings[-1]["start_round"])   # this sitting's pace
        log(f"round {done}/{total} done, {elapsed / 60:.1f} min elapsed, about {per_round * (total - done) / 60:.1f} "
            f"min left; load average {os.getloadavg()[0]:.2f}")
        result["methods"] = methods_json()
        sittings[-1].update(end_round=done, wall_s=time.perf_counter() - started,
                            load_average_end=list(os.getloadavg()))
        _save_state(state_path, runs, result["settings"], sittings)   # --resume continues from here
        _write(stem + ".json", result)      # a run cut short keeps every round so far

    budget = s["budget_minutes"] * 60 if s["budget_minutes"] else None
    saved_cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True   # for every method alike, as the original MDEQ's configs (GPU only)
    try:
        run_interleaved(runs, s["evals_per_epoch"], budget, on_point=on_point, on_round=on_round)
    finally:
        torch.backends.cudnn.benchmark = saved_cudnn
    result["methods"] = methods_json()
    result["load_average_end"] = list(os.getloadavg())
    result["wall_s"] = wall_before + time.perf_counter() - started
    summary = summarise(result["methods"], s["targets"])
    verdicts = targets(result["methods"], summary)
    result.update(summary=summary, targets=verdicts)
    title = (f"time to accuracy, {s['preset']}, batch {cfg.batch_size}, {len(splits.train)} training images, "
             f"{result['env']['device']}")
    result["table"] = tables(summary, verdicts, s["targets"])
    result["files"] = [stem + ".json", figure(result, stem + ".png"), stem + ".md"]
    with open(stem + ".md", "w") as fh:
        fh.write(f"{title}; load average {load_start[0]:.2f} at start, {result['load_average_end'][0]:.2f} at end\n\n"
                 + result["table"] + "\n")
    _write(stem + ".json", result)
    if args.save_runs:
        for r in runs:
            _save_run(os.path.join(args.save_runs, r.spec.name), r, cfg)
    print(result["table"])
    print("\nwrote " + ", ".join(result["files"]))
    return 0


def main(argv=None) -> int:
    from ..command import configure_or_exit

    configure_or_exit("time to accuracy")   # before the first large tensor (LMDEQ_TUNE_ALLOCATOR=0: glibc's)
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
