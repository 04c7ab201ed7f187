"""The ``lmdeq`` command line: ``lmdeq info | bench | train | eval``.

A documented error (:class:`lmdeq.errors.LmdeqError`: a bad argument, file, data set, checkpoint or run
directory) is printed as one line, ``lmdeq <command>: error: ...``, with exit status 2; warnings of the
library (skipped images, unconverged solves, a repaired run directory) as ``lmdeq <command>: warning: ...``;
Ctrl-C as one line with exit status 130. Any other exception is a bug and keeps its traceback. Under
torchrun (``torchrun ... -m lmdeq.app.cli train ...``) each rank's error line names the rank.
"""
from __future__ import annotations

import argparse
import sys

from .command import configure_or_exit, run_command


def _info(args):
    from . import info

    return info.main([])


def _bench(args):
    from .bench import cli as bench_cli

    return bench_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="lmdeq", description="Fast, provably convergent deep equilibrium models")
    parser.add_argument("--version", action="version", version=f"lmdeq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p_info = sub.add_parser("info", help="versions, build and the backend chosen for each op")
    p_info.set_defaults(handler=_info)
    from .bench import cli as bench_cli

    p_bench = sub.add_parser("bench", help="run the benchmarks (default: the main one)")
    bench_cli.add_arguments(p_bench)
    p_bench.set_defaults(handler=_bench)
    try:
        from .train import cli as train_cli
    except ImportError as exc:  # training needs torchvision; say so instead of hiding the commands
        msg = f"training is unavailable: {exc}"

        def _missing(args, msg=msg):
            print(msg, file=sys.stderr)
            return 2

        for name in ("train", "eval"):
            sub.add_parser(name, help=msg).set_defaults(handler=_missing)
    else:
        train_cli.register(sub)
    return parser


def main(argv=None) -> int:
    configure_or_exit("lmdeq")   # before the first large tensor (LMDEQ_TUNE_ALLOCATOR=0 keeps glibc's defaults)
    args = build_parser().parse_args(argv)
    return run_command(args, f"lmdeq {args.command}")


if __name__ == "__main__":
    sys.exit(main())
