"""Running a command-line handler the way every lmdeq command does.

A documented error (:class:`lmdeq.errors.LmdeqError`) becomes one line, ``<prog>: error: ...``, and exit
status 2; lmdeq's log records (skipped images, unconverged solves, a repaired run directory) are printed as
``<prog>: [warning: ]message``; Ctrl-C is one line and exit status 130. Any other exception is a bug and keeps
its traceback. Used by :mod:`lmdeq.app.cli` and :mod:`lmdeq.app.train.cli` alike.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import LmdeqError

__all__ = ["run_command", "one_line"]


class _StderrHandler(logging.Handler):
    """Prints lmdeq's log records to the current ``sys.stderr`` as ``<prog>: [warning: ]message``."""

    prog = "lmdeq"

    def emit(self, record):
        kind = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        print(f"{self.prog}: {kind}{record.getMessage()}", file=sys.stderr, flush=True)


_handler = _StderrHandler()


def one_line(err: BaseException) -> str:
    """An exception's whole message on one line (its lines stripped and joined by spaces)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def _rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of a process started by torchrun; (0, 1) otherwise (or when they do not parse)."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def configure_or_exit(prog: str) -> None:
    """What lmdeq's entry points call first (:func:`lmdeq.app.allocator.configure_process`); a bad
    LMDEQ_TUNE_ALLOCATOR is one line and exit status 2, as any documented error."""
    from .allocator import configure_process

    try:
        configure_process()
    except LmdeqError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Run ``args.handler(args)``: an LmdeqError becomes one line on stderr and exit status 2. Under torchrun,
    ranks other than 0 name themselves in their lines (``lmdeq train [rank 1/4]: ...``) and print only
    errors: their warnings would repeat rank 0's."""
    rank, world = _rank()
    if world > 1 and rank != 0:
        prog = f"{prog} [rank {rank}/{world}]"
    _handler.prog = prog
    logger = logging.getLogger("lmdeq")
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    try:
        rc = args.handler(args)
    except LmdeqError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    return int(rc or 0)
