"""``lmdeq train`` and ``lmdeq eval``. :func:`register` adds both subcommands to an argparse
subparsers object; ``python -m lmdeq.app.train.cli train|eval ...`` runs them standalone.

The flags are those of :mod:`lmdeq.app.train.arguments`. A train flag given on the command line overrides the
``--config`` file's (:mod:`lmdeq.app.train.config_file`); training flags set by neither take the checkpoint's value
when resuming and the defaults of :class:`~lmdeq.app.train.config.TrainConfig` otherwise (the authors' CIFAR-10
settings). Errors: see :mod:`lmdeq.app.cli` (one line for a documented error, exit status 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..command import configure_or_exit, run_command
from ...errors import ConfigError
from .arguments import (CONFIG_FLAGS, TRAIN_DEFAULTS, add_eval_arguments, add_train_arguments, parse_override,
                        parse_value, train_parser)
from .config import TrainConfig
from .config_file import file_arguments
from .metrics import fmt_number, json_number

__all__ = ["register", "main", "resolve_train_args", "config_from_args", "parse_value", "parse_override"]


def _unique_overrides(pairs) -> None:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(f"--set given more than once for {dup}")


def resolve_train_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every train flag's value: the flags given on the command line, over those of the ``--config`` file
    (:mod:`lmdeq.app.train.config_file`), over :data:`~lmdeq.app.train.arguments.TRAIN_DEFAULTS`. A flag given
    on the command line replaces the file's choice among the flags it excludes (--data the file's dataset, --original
    its lipschitz); ``--set KEY=VALUE`` replaces the file's ``set`` value of KEY only."""
    given = {k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS}
    _unique_overrides(given.get("overrides", []))
    from_file = {}
    if given.get("config") is not None:
        parser = train_parser()
        from_file = file_arguments(given["config"], parser)
        for group in parser._mutually_exclusive_groups:
            dests = {a.dest for a in group._group_actions}
            if dests & set(given):
                from_file = {k: v for k, v in from_file.items() if k not in dests}
    merged = {**TRAIN_DEFAULTS, **from_file, **given}
    merged["overrides"] = list({**dict(from_file.get("overrides", [])), **dict(given.get("overrides", []))}.items())
    return argparse.Namespace(**{**vars(args), **merged})


def config_from_args(args: argparse.Namespace, saved: dict | None = None) -> TrainConfig:
    """TrainConfig from the flags given, on top of ``saved`` (a checkpoint's config) or the defaults."""
    given = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "dataset", None) is not None:
        given["data"] = args.dataset
    overrides = getattr(args, "overrides", None) or []
    if overrides:
        _unique_overrides(overrides)
        given["model_overrides"] = {**(saved or {}).get("model_overrides", {}), **dict(overrides)}
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

    args = resolve_train_args(args)
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
                                   allow_data_change=args.allow_data_change, log=args.log,
                                   checkpoint_every=args.checkpoint_every, write_config=True)
        except KeyboardInterrupt:
            if dist.is_main:
                state = "the last completed epoch" + (" or step checkpoint" if args.checkpoint_every else "")
                kept = (f"{Path(out) / LAST} holds {state}; continue with: lmdeq train --resume "
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
                            dist_backend=args.dist_backend, allow_data_change=args.allow_data_change)
    if not is_main_process():
        return 0  # rank 0 prints the result, which every rank holds
    if args.json:
        print(json.dumps({k: json_number(v) if isinstance(v, float) else v for k, v in result.items()}))
        return 0
    bound = result["lipschitz_bound"]
    print(f"eval: {result['checkpoint']} (epoch {result['epoch']}, step {result['step']}) on {result['split']}: "
          f"{result['n']} images, "
          f"loss {result['loss']:.4f}, acc {result['acc']:.4f}, f_nstep {fmt_number(result.get('f_nstep'), '.3g')}, "
          f"f_residual {fmt_number(result.get('f_residual'), '.3g')}, certified L = {fmt_number(bound, '.4f')}"
          f" (verified {fmt_number(result['lipschitz_bound_verified'], '.4f')}"
          f"{'; contraction certified' if result['certified'] else ''}), {result['time_s']:.1f}s")
    return 0


def register(subparsers) -> None:
    """Add ``train`` and ``eval`` to ``subparsers``; each sets ``handler(args) -> exit code``."""
    from ...models.presets import describe_presets

    p = subparsers.add_parser("train", help="train an MDEQ image classifier", argument_default=argparse.SUPPRESS,
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
