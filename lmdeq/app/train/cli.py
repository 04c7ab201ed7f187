"""``lmdeq train`` and ``lmdeq eval``. :func:`register` adds both subcommands to an argparse
subparsers object; ``python -m lmdeq.app.train.cli train|eval ...`` runs them standalone.

Training flags left out take the checkpoint's value when resuming and the defaults of
:class:`~lmdeq.app.train.config.TrainConfig` otherwise (the authors' CIFAR-10 settings). Errors: see
:mod:`lmdeq.app.cli` (one line for a documented error, exit status 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..command import configure_or_exit, run_command
from ..argtypes import float_in, non_negative_float, output_dir, path, positive_float, seed, text
from ..argtypes import non_negative_int as _non_negative_int, positive_int as _positive_int
from ...errors import ConfigError
from .config import TrainConfig
from .distributed import BACKENDS
from .metrics import fmt_number, json_number

# CLI destination -> TrainConfig field, for the flags that set the training config.
CONFIG_FLAGS = ("preset", "lipschitz", "data", "val_data", "val_fraction", "limit_train", "limit_val", "channels",
                "image_size", "epochs",
                "batch_size", "eval_batch_size", "lr", "min_lr", "weight_decay", "grad_clip", "augment", "seed")


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


def _add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=text("a device"), default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--workers", type=_non_negative_int, default=0, help="data loader worker processes (default: 0)")
    p.add_argument("--cache-dir", type=path, help="where archives are extracted and images decoded "
                                       "(default: $LMDEQ_CACHE/datasets or ~/.cache/lmdeq/datasets)")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first image file that cannot be decoded (default: skip such files and report "
                        "how many, with the first few paths)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--dist-backend", choices=BACKENDS, default="auto",
                   help="under torchrun: the torch.distributed backend (default: auto = nccl on CUDA, gloo on the CPU)")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--preset", type=text("a preset name"), help="model preset of lmdeq.models.PRESETS (default: cifar10-small)")
    variant = m.add_mutually_exclusive_group()
    variant.add_argument("--lipschitz", dest="lipschitz", action="store_const", const=True,
                         help="the Lipschitz MDEQ with a certified contraction bound (default)")
    variant.add_argument("--original", dest="lipschitz", action="store_const", const=False,
                         help="the original, unconstrained MDEQ")
    m.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="override a model setting (repeatable; values: true/false, none, int, float, "
                        "JSON list/dict, else string), e.g. --set dropout=0.1 --set channels=[16,16]")
    d = p.add_argument_group("data")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--data", type=path, help="ImageFolder directory, .tar.gz of one, torchvision:<root> (CIFAR-10, "
                     "downloaded when missing), or <Name>:<root> of a torchvision data set on disk (CIFAR10, CIFAR100, "
                     "SVHN, MNIST, FashionMNIST, STL10)")
    src.add_argument("--dataset", choices=["cifar10"],
                     help="torchvision's CIFAR-10 in the cache directory, downloaded when missing")
    d.add_argument("--val-data", type=path, help="validation images (default: the data's test split, else a hold-out)")
    d.add_argument("--val-fraction", type=float_in(0.0, 1.0, high_open=True, kind="a fraction"), help="share of training images held out for validation "
                                                      "when there is no test split (default: 0.1; 0: none)")
    d.add_argument("--limit-train", type=_positive_int, help="train on a stratified subset of this many images")
    d.add_argument("--limit-val", type=_positive_int, help="validate on a stratified subset of this many images")
    d.add_argument("--channels", type=int, choices=(1, 3),
                   help="convert the images to this many channels (3 -> 1: luma; 1 -> 3: repeated), e.g. 1 for a "
                        "1-channel preset on RGB data")
    d.add_argument("--image-size", type=_positive_int,
                   help="resize the images to this square size once after decoding (bilinear, antialiased), e.g. "
                        "64 for tiny-imagenet-small on 32x32 data")
    d.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="no random crop / flip")
    o = p.add_argument_group("optimisation (defaults: the authors' CIFAR-10 settings)")
    o.add_argument("--epochs", type=_positive_int,
                   help="(default: 50; when resuming, more than the run planned extends it: the added epochs run "
                        "a new cosine cycle from --lr to --min-lr)")
    o.add_argument("--batch-size", type=_positive_int, help="(default: 128)")
    o.add_argument("--eval-batch-size", type=_positive_int, help="(default: 256)")
    o.add_argument("--lr", type=positive_float, help="Adam learning rate, start of the per-step cosine (default: 1e-3)")
    o.add_argument("--min-lr", type=non_negative_float, help="learning rate at the end of the cosine (default: 1e-6)")
    o.add_argument("--weight-decay", type=non_negative_float, help="(default: 0)")
    o.add_argument("--grad-clip", type=non_negative_float, help="max global gradient norm, 0: off (default: 0)")
    o.add_argument("--seed", type=seed, help="seeds init, data split and order (default: 0)")
    r = p.add_argument_group("run")
    r.add_argument("--out", type=output_dir, help="run directory for metrics.jsonl, last.pt, best.pt "
                                 "(default: runs/<preset>-<variant>-seed<seed>, or the --resume file's directory)")
    r.add_argument("--resume", nargs="?", const=True, type=path, metavar="CHECKPOINT",
                   help="continue a run exactly: from CHECKPOINT (a last.pt, or a run directory), or from "
                        "<out>/last.pt when no path is given. A checkpoint other than its directory's last.pt "
                        "continues only into a new --out (a fork)")
    r.add_argument("--bound-every", type=_positive_int, default=50,
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
    p.add_argument("--data", type=path, help="images to evaluate on (default: the checkpoint's training data)")
    p.add_argument("--split", choices=["val", "train", "all"], default="val",
                   help="val: the run's validation images (test split or its hold-out); train: its training "
                        "images; all: every image of --data (default: val)")
    p.add_argument("--limit", type=_positive_int, help="evaluate a stratified subset of this many images")
    p.add_argument("--batch-size", type=_positive_int, help="(default: the checkpoint's eval batch size)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _add_runtime_arguments(p)


def config_from_args(args: argparse.Namespace, saved: dict | None = None) -> TrainConfig:
    """TrainConfig from the flags given, on top of ``saved`` (a checkpoint's config) or the defaults."""
    given = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    if args.dataset is not None:
        given["data"] = args.dataset
    if args.overrides:
        keys = [k for k, _ in args.overrides]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError(f"--set given more than once for {dup}")
        given["model_overrides"] = {**(saved or {}).get("model_overrides", {}), **dict(args.overrides)}
    return TrainConfig.from_dict({**(saved or {}), **given})


def summary_line(summary: dict, out: str | None) -> str:
    final = summary.get("final") or {}
    train_bound, eval_bound = summary["lipschitz_bound"], summary["lipschitz_bound_eval"]
    if train_bound is None:
        cert = "n/a (the model has no lipschitz_bound())"
    else:
        cert = (f"{train_bound:.4g} in training, {fmt_number(eval_bound, '.4g')} at inference "
                f"({'L < 1: contraction certified' if summary['certified'] else 'not certified'})")
    return (f"summary: {summary['epochs']} epochs, {summary['steps']} steps in {summary['time_s']:.1f}s; "
            f"train acc {fmt_number(final.get('train_acc'), '.4f')}, val acc {fmt_number(final.get('val_acc'), '.4f')} "
            f"(best {fmt_number(summary['best_val_acc'], '.4f')} at epoch {summary['best_epoch']}); "
            f"certified Lipschitz bound L = {cert}; run directory {out}")


def _default_out(cfg: TrainConfig) -> str:
    return f"runs/{cfg.preset}-{'lipschitz' if cfg.lipschitz else 'original'}-seed{cfg.seed}"


def handle_train(args: argparse.Namespace) -> int:
    from .distributed import distributed
    from .run import elastic_resume, load_run_checkpoint, resolve_device, resume_path, run_training
    from .trainer import LAST

    with distributed(resolve_device(args.device), args.dist_backend) as (dist, _device):
        resume = None
        if args.resume is not None:
            if args.resume is not True:   # (True: --resume without a path)
                resume = resume_path(args.resume)
            elif args.out:
                resume = Path(args.out) / LAST
            else:
                raise ConfigError("--resume without a path needs --out (the run directory)")
        out = args.out or (str(resume.parent) if resume is not None else _default_out(config_from_args(args)))
        restarted = elastic_resume(out, dist)  # a worker group torchrun restarted continues its own run
        resume = restarted if restarted is not None else resume
        saved = None
        if resume is not None:
            saved = dist.from_main(lambda: load_run_checkpoint(resume)["train_config"])
        cfg = config_from_args(args, saved)
        try:
            summary = run_training(cfg, device=args.device, workers=args.workers, out_dir=out, resume=resume,
                                   cache_dir=args.cache_dir, progress=args.progress, bound_every=args.bound_every,
                                   strict=args.strict, dist_backend=args.dist_backend, sync_bn=args.sync_bn,
                                   allow_data_change=args.allow_data_change)
        except KeyboardInterrupt:
            if dist.is_main:
                kept = (f"{Path(out) / LAST} holds the last completed epoch; continue with: lmdeq train --resume "
                        f"--out {out}" if (Path(out) / LAST).exists() else "no epoch was completed")
                print(f"lmdeq train: interrupted; {kept}", file=sys.stderr, flush=True)
            return 130
        if dist.is_main:
            print(summary_line(summary, out))
    return 0


def handle_eval(args: argparse.Namespace) -> int:
    from .distributed import is_main_process
    from .run import run_evaluation

    result = run_evaluation(args.checkpoint, data=args.data, split=args.split, limit=args.limit,
                            batch_size=args.batch_size, device=args.device, workers=args.workers,
                            cache_dir=args.cache_dir, progress=args.progress, strict=args.strict,
                            dist_backend=args.dist_backend)
    if not is_main_process():
        return 0  # rank 0 prints the result, which every rank holds
    if args.json:
        print(json.dumps({k: json_number(v) if isinstance(v, float) else v for k, v in result.items()}))
        return 0
    bound = result["lipschitz_bound"]
    print(f"eval: {result['checkpoint']} (epoch {result['epoch']}) on {result['split']}: {result['n']} images, "
          f"loss {result['loss']:.4f}, acc {result['acc']:.4f}, f_nstep {fmt_number(result.get('f_nstep'), '.3g')}, "
          f"f_residual {fmt_number(result.get('f_residual'), '.3g')}, certified L = {fmt_number(bound, '.4f')}"
          f"{' (contraction certified)' if result['certified'] else ''}, {result['time_s']:.1f}s")
    return 0


def register(subparsers) -> None:
    """Add ``train`` and ``eval`` to ``subparsers``; each sets ``handler(args) -> exit code``."""
    from ...models.presets import describe_presets

    p = subparsers.add_parser("train", help="train an MDEQ image classifier",
                              description="Train an MDEQ image classifier (a preset's architecture, input shape and "
                                          "class count; --set changes any of them).",
                              epilog="presets (--preset):\n" + "\n".join("  " + line for line in describe_presets()),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(handler=handle_train)
    q = subparsers.add_parser("eval", help="evaluate a training checkpoint",
                              description="Evaluate a checkpoint written by lmdeq train.")
    add_eval_arguments(q)
    q.set_defaults(handler=handle_eval)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmdeq.app.train.cli")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    configure_or_exit("lmdeq")   # before the first large tensor (LMDEQ_TUNE_ALLOCATOR=0 keeps glibc's defaults)
    args = parser.parse_args(argv)
    return run_command(args, f"lmdeq {args.command}")


if __name__ == "__main__":
    sys.exit(main())
