"""A run directory (``last.pt``, ``best.pt``, ``metrics.jsonl``): its lock, the epoch-end commit, and
the repair of what a crash left.

Commit. ``last.pt`` is the run: it holds the full training state *and* every epoch's metrics record
and the best epoch's weights. An epoch end (:func:`commit_epoch`) writes it atomically (the commit
point), then derives ``best.pt`` (when the epoch improved) and ``metrics.jsonl`` from it. A crash at any
instant leaves the previous or the new ``last.pt``; :func:`reconcile` (run before training resumes)
rewrites whichever derived file is missing, stale or torn, and deletes the temporary files of killed
writers, so a resumed run ends with exactly the files of an uninterrupted one. A step checkpoint
(:func:`commit_step`, ``lmdeq train --checkpoint-every``) writes ``last.pt`` alone, the same atomic way: its
derived files are those of the last epoch end, which it leaves as they are.

Lock. :func:`locked` holds an exclusive ``fcntl.flock`` on ``<run>/.lock`` (holder's pid inside) while a
process trains into the directory; a second process fails at once with :class:`RunLockedError` naming
the holder. The kernel drops the lock when its holder dies (even by SIGKILL), so a lock file left by a
dead process is simply taken over. The lock is re-entrant within a process. A directory the lock
created is removed again if nothing was committed into it (a run that failed before its first epoch).

Resuming (:func:`check_run_dir`): a directory whose ``last.pt`` exists continues only from that very
file; resuming from any other checkpoint (an older copy, another run's) into it is refused, because it
would rewind the run; into a new directory it forks: the checkpoint becomes that directory's
``last.pt``. In a distributed run only rank 0 calls these functions.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

from ...errors import CheckpointError, RunDirectoryError, RunLockedError
from ..atomic import pid_alive, remove_stale_temporaries
from .checkpoint import BEST, RUN, load_checkpoint, save_checkpoint
from ..faults import fault_point
from .metrics import jsonl_text, write_jsonl

LAST, BEST_FILE, METRICS, LOCK = "last.pt", "best.pt", "metrics.jsonl", ".lock"

log = logging.getLogger("lmdeq.app.train")
_held: dict[str, list] = {}  # realpath -> [fd, depth, pid] (a forked child does not inherit the holding)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _make_dirs(run_dir: Path) -> list[Path]:
    """mkdir -p ``run_dir``; the directories it created, deepest first."""
    created, d = [], run_dir
    while not d.exists():
        created.append(d)
        d = d.parent
    if d.exists() and not d.is_dir():
        raise RunDirectoryError(f"out: {d} is a file, not a directory; choose another --out")
    try:
        for c in reversed(created):
            c.mkdir()
    except OSError as err:
        raise RunDirectoryError(f"out: cannot create the run directory {run_dir} ({err.strerror or err}); "
                                "choose another --out") from err
    return created


def _open_locked(path: Path, run_dir: Path) -> int:
    """Open ``path`` and hold an exclusive flock on the file that is at ``path`` (retrying when a releasing
    holder unlinked it in between)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirectoryError(f"out: cannot write to the run directory {run_dir} "
                                    f"({err.strerror or err})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryError(f"out: cannot lock {path} ({err.strerror or err})") from err
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise RunLockedError(f"out: {run_dir} is in use by {who} (lock file {path}); wait for it to finish, "
                                 "or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold the run directory's lock for the duration (creating the directory if needed)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"out: {run_dir} is a file, not a directory; choose another --out")
    key = os.path.realpath(run_dir)
    if key in _held and _held[key][2] == os.getpid():
        _held[key][1] += 1
        try:
            yield run_dir
        finally:
            _held[key][1] -= 1
        return
    path = run_dir / LOCK
    created = _make_dirs(run_dir)
    if not created and run_dir.is_dir() and [e.name for e in run_dir.iterdir()] == [LOCK]:
        created = [run_dir]  # only the lock file of a killed lmdeq process: lmdeq made this directory
    try:
        fd = _open_locked(path, run_dir)
    except BaseException:
        _remove_empty(created)
        raise
    previous = _read_holder(fd)
    if previous.isdigit() and int(previous) != os.getpid() and not pid_alive(int(previous)):
        log.info("out: took over the lock of %s, left by process %s which is no longer running", run_dir, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1, os.getpid()]
    try:
        yield run_dir
    finally:
        del _held[key]
        path.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for d in created:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break  # not empty: something was committed into it


# -- the epoch-end commit and its derived files ------------------------------------------------------------
def best_payload(state: dict) -> dict:
    """``best.pt`` of a run state: the best epoch's weights, configs and record, and the run's data digests."""
    b = state["best_epoch"]
    record = state["history"][b - 1]
    weights = state["model_state"] if state["best_model_state"] is None else state["best_model_state"]
    return {"model_state": weights, "model_config": state["model_config"], "train_config": state["train_config"],
            "epoch": b, "step": record["step"], "run_id": state["run_id"], "classes": state["classes"],
            "record": record, "best_val_acc": state["best_val_acc"], "best_epoch": b,
            "lipschitz_bound": record.get("lipschitz_bound"),
            "lipschitz_bound_eval": record.get("lipschitz_bound_eval"),
            **({"data_digest": state["data_digest"]} if "data_digest" in state else {})}


@contextlib.contextmanager
def _writing(run_dir: Path):
    """A failed write (disk full, permissions) as a RunDirectoryError; the files it replaces are intact."""
    try:
        yield
    except OSError as err:
        raise RunDirectoryError(f"out: cannot write into {run_dir} ({err.strerror or err}); the files already there "
                                "are intact: free space (or fix permissions) and resume the run") from err


def commit_epoch(run_dir: str | os.PathLike, state: dict) -> None:
    """Commit a completed epoch: ``last.pt`` (atomic), then its derived ``best.pt`` (if this epoch is the
    best) and ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    fault_point("epoch-end")
    with _writing(run_dir):
        save_checkpoint(run_dir / LAST, state, RUN)
        if state["best_epoch"] is not None and state["best_epoch"] == state["epoch"]:
            save_checkpoint(run_dir / BEST_FILE, best_payload(state), BEST)
        write_jsonl(run_dir / METRICS, state["history"])


def commit_step(run_dir: str | os.PathLike, state: dict) -> None:
    """Commit a run state within an epoch (a step checkpoint): ``last.pt`` alone, atomically."""
    run_dir = Path(run_dir)
    with _writing(run_dir):
        save_checkpoint(run_dir / LAST, state, RUN)


def _best_is_current(path: Path, state: dict) -> bool:
    try:
        best = load_checkpoint(path)
    except CheckpointError:
        return False
    b = state["best_epoch"]
    return (best.get("kind") == BEST and best.get("run_id") == state["run_id"] and best.get("epoch") == b
            and best.get("record") == state["history"][b - 1])


def _sync_derived(run_dir: Path, state: dict) -> list[str]:
    """Rewrite the derived files that do not agree with ``state``; what was rewritten."""
    done = []
    metrics = run_dir / METRICS
    if state["history"]:
        want = jsonl_text(state["history"])
        have = metrics.read_text(encoding="utf-8", errors="replace") if metrics.is_file() else None
        if have != want:
            write_jsonl(metrics, state["history"])
            done.append(f"rewrote {METRICS} (epochs 1-{len(state['history'])})")
    if state["best_epoch"] is not None and not _best_is_current(run_dir / BEST_FILE, state):
        save_checkpoint(run_dir / BEST_FILE, best_payload(state), BEST)
        done.append(f"rewrote {BEST_FILE} (epoch {state['best_epoch']})")
    return done


def reconcile(run_dir: str | os.PathLike, state: dict) -> list[str]:
    """Make the derived files of ``run_dir`` agree with ``state`` (its ``last.pt``) and delete temporary
    files of killed writers; returns what was repaired. Call it holding the directory's lock."""
    run_dir = Path(run_dir)
    with _writing(run_dir):
        repaired = [f"removed {p.name}" for p in remove_stale_temporaries(run_dir, all_owners=True)]
        repaired += _sync_derived(run_dir, state)
    if repaired:
        log.warning("out: repaired %s from its %s after an interrupted run: %s", run_dir, LAST, "; ".join(repaired))
    return repaired


# -- which directory a run may write into -------------------------------------------------------------------
def check_run_dir(run_dir: str | os.PathLike, resume: str | os.PathLike | None = None) -> bool:
    """Refuse a directory this run must not write into (RunDirectoryError naming what to do); True when the
    run forks ``resume`` into a fresh directory (the caller then commits it there with :func:`fork`)."""
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if last.exists():
        if resume is None:
            raise RunDirectoryError(f"out: {run_dir} already holds a run ({LAST}); resume it (--resume) "
                                    "or choose another output directory")
        if not os.path.samefile(resume, last):
            raise RunDirectoryError(
                f"out: {run_dir} holds a run whose newest state is {last}; resuming from {resume} would rewind or "
                f"overwrite it. Resume from {last}, or continue {resume} in a new run directory with --out NEW_DIR")
        return False
    leftovers = [n for n in (BEST_FILE, METRICS) if (run_dir / n).exists()]
    if leftovers:
        raise RunDirectoryError(f"out: {run_dir} holds {', '.join(leftovers)} but no {LAST} (not a run lmdeq can "
                                "continue); choose another --out or remove them")
    return resume is not None


def fork(run_dir: str | os.PathLike, state: dict, source: str | os.PathLike) -> None:
    """Commit the run state ``state`` (resumed from ``source``) as the ``last.pt`` of the new ``run_dir``,
    with its derived files."""
    run_dir = Path(run_dir)
    with _writing(run_dir):
        save_checkpoint(run_dir / LAST, state, RUN)
        _sync_derived(run_dir, state)
    log.info("out: continuing %s (epoch %s) in the new run directory %s", source, state["epoch"], run_dir)


# -- comparing two runs ----------------------------------------------------------------------------------------
TIMING_KEYS = frozenset({"train_time_s", "val_time_s", "images_per_s"})
INVOCATION_FILES = frozenset({"config.json"})   # the flags of one invocation (its --out included), not the run's result


def _differs(a, b) -> bool:
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        return not (torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def compare_runs(reference: str | os.PathLike, other: str | os.PathLike) -> list[str]:
    """How the run directory ``other`` differs from ``reference`` (empty: the same run, bit for bit, up to
    wall-clock timings and the ids of the run and of its torchrun job): file names (but config.json), every tensor
    and number of last.pt and best.pt, metrics.jsonl, and the CSV logs (:mod:`lmdeq.app.train.loggers`: steps.csv
    exactly, epochs.csv but its timing columns). Used to check that a killed and resumed run ended exactly like an
    uninterrupted one."""
    from .loggers import EPOCHS_CSV, STEPS_CSV
    from .metrics import read_jsonl

    ref, got = Path(reference), Path(other)
    names = [sorted(p.name for p in d.iterdir() if p.name not in INVOCATION_FILES) for d in (ref, got)]
    if names[0] != names[1]:
        return [f"files {names[1]} instead of {names[0]}"]
    problems = []
    for name in (LAST, BEST_FILE):
        if not (ref / name).exists():
            continue
        a, b = load_checkpoint(ref / name), load_checkpoint(got / name)
        for key in sorted(set(a) | set(b)):
            va, vb = a.get(key), b.get(key)
            if key in ("run_id", "forked_from", "elastic_run_id"):
                continue
            if key == "history":
                va, vb = _untimed(va), _untimed(vb)
            if key == "record":
                va, vb = _untimed([va])[0], _untimed([vb])[0]
            if _differs(va, vb):
                problems.append(f"{name}: {key} differs")
    if (ref / METRICS).exists():
        if _untimed(read_jsonl(ref / METRICS)) != _untimed(read_jsonl(got / METRICS)):
            problems.append(f"{METRICS} differs")
        if read_jsonl(got / METRICS) != load_checkpoint(got / LAST)["history"]:
            problems.append(f"{METRICS} is not the history its {LAST} committed")
    if (ref / STEPS_CSV).exists() and (ref / STEPS_CSV).read_bytes() != (got / STEPS_CSV).read_bytes():
        problems.append(f"{STEPS_CSV} differs")
    if (ref / EPOCHS_CSV).exists() and _untimed_csv(ref / EPOCHS_CSV) != _untimed_csv(got / EPOCHS_CSV):
        problems.append(f"{EPOCHS_CSV} differs")
    return problems


def _untimed_csv(path: Path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return _untimed(list(csv.DictReader(fh)))
