"""Where the benchmarks write their results, shared by ``lmdeq bench`` (every suite), benchmarks/*.py and
scripts/gpu_train.py.

* Unless ``--out`` says otherwise, a run writes into a new run folder outside the checkout:
  ``$LMDEQ_RUNS/<command>-<YYYYmmdd-HHMMSS>/`` (LMDEQ_RUNS unset: ``~/.cache/lmdeq/bench``), made for the run
  (``-2``, ``-3``, ... appended when the name is taken), so that a run never lands in, or over, the committed
  results of benchmarks/results/. Those are written only by a command whose ``--out`` points there.
* A result file that already exists where the run would write it is refused before any work starts (a
  :class:`lmdeq.errors.ConfigError` naming ``--out`` and the file), unless ``--force``.
* A bad ``--out`` (empty, a file where a directory is expected, a directory whose parent does not exist, not
  writable) is an argparse error naming the flag (:func:`out_dir`; files: :func:`lmdeq.app.argtypes.output_file`),
  raised while the arguments are parsed, i.e. before any work.

Every command prints the folder it writes to when it starts and the files it wrote when it ends.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ...errors import ConfigError
from ..argtypes import output_dir

__all__ = ["RUNS_ENV", "runs_root", "out_dir", "add_out_arguments", "out_help", "new_run_folder", "result_dir",
           "result_file"]

RUNS_ENV = "LMDEQ_RUNS"


def runs_root() -> Path:
    """``$LMDEQ_RUNS``, else ``~/.cache/lmdeq/bench``: where the default run folders go."""
    root = os.environ.get(RUNS_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lmdeq" / "bench"


def out_help(command: str, what: str = "directory for the result files") -> str:
    """The ``--out`` help of a command whose default run folder is named after ``command``."""
    return (f"{what} (default: a new run folder ${RUNS_ENV}/{command}-<YYYYmmdd-HHMMSS>/, with {RUNS_ENV} unset "
            "~/.cache/lmdeq/bench/...; an existing result file there is refused unless --force)")


def out_dir(value: str) -> str:
    """An argparse type: a result directory (:func:`lmdeq.app.argtypes.output_dir`) whose parent exists: the run
    makes the directory itself, never a missing tree above it (a misspelt path is an error, not a new folder)."""
    value = output_dir(value)
    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot write into {value!r}: its parent directory {parent} does not exist")
    return value


def add_out_arguments(parser, command: str, out_type=out_dir, what: str = "directory for the result files") -> None:
    """``--out`` (``out_type``, default None: a new run folder named after ``command``) and ``--force``."""
    parser.add_argument("--out", type=out_type, default=None, help=out_help(command, what))
    parser.add_argument("--force", action="store_true",
                        help="overwrite result files that exist already (default: refuse them before any work)")


def new_run_folder(command: str) -> Path:
    """A new, empty folder ``<runs_root()>/<command>-<timestamp>[-N]`` (ConfigError when it cannot be made)."""
    root = runs_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot make the run folder under {root} ({err.strerror or err}); set {RUNS_ENV} to a "
                          "writable directory or pass --out") from None
    stem = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"no free run folder name {stem}-N under {root}; pass --out")


def _announce(command: str, where: Path) -> None:
    print(f"{command}: writing results to {where}", file=sys.stderr, flush=True)


def result_dir(out: Optional[str], command: str, names: Sequence[str] = (), force: bool = False) -> Path:
    """The directory a run writes its files ``names`` into: ``out`` (made if missing) when given, else a new run
    folder (:func:`new_run_folder`). Raises ConfigError naming ``--out`` and the first of ``names`` that exists
    in ``out`` already, unless ``force``. Prints the directory."""
    if out is None:
        where = new_run_folder(command)
    else:
        where = Path(out)
        taken = [n for n in names if (where / n).exists()]
        if taken and not force:
            raise ConfigError(f"--out {out}: {taken[0]} exists already; pass --force to overwrite it, or choose "
                              "another --out")
        where.mkdir(parents=True, exist_ok=True)
    _announce(command, where)
    return where


def result_file(out: Optional[str], command: str, name: str, force: bool = False, suffixes: Sequence[str] = ("",),
                flag: str = "--out") -> Path:
    """The file a run writes (or, with ``suffixes``, the stem its files share): ``out`` when given, else ``name``
    in a new run folder. Raises ConfigError naming ``flag`` when a file ``<out><suffix>`` exists already, unless
    ``force``. Prints where it goes."""
    if out is None:
        path = new_run_folder(command) / name
    else:
        path = Path(out)
        taken = [f"{out}{s}" for s in suffixes if Path(f"{out}{s}").exists()]
        if taken and not force:
            which = "" if taken[0] == out else f": {taken[0]}"
            raise ConfigError(f"{flag} {out}{which} exists already; pass --force to overwrite it, or choose another "
                              f"{flag}")
    _announce(command, path)
    return path
