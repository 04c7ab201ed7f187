"""Named fault points: the exact instants at which the crash tests kill a run.

``LMDEQ_FAULT_AT=<point>`` (or ``<point>@<n>``: its n-th occurrence, default 1) makes the process
SIGKILL itself when it reaches that point, so a test can stop a run at an exact instant instead of by
luck of timing. Qualifiers, each ``;key=value`` after the point, restrict it to some processes of a
distributed run: ``rank=<r>`` (only the process whose ``RANK`` is r) and ``attempt=<k>`` (only while
torchrun's ``TORCHELASTIC_RESTART_COUNT`` is k, so a worker group restarted by torchrun runs on), e.g.
``step@3;rank=1;attempt=0``. ``LMDEQ_HANG_AT`` (same syntax) makes the process sleep there instead, until
something kills it: a step that runs past its time cap, for scripts/gpu_check.sh's smoke run. Unset (always,
outside tests) each costs one environment lookup per point. The points:

* ``step``: after an optimiser step (and its constraint upkeep, and its row in the step logs);
* ``step-checkpoint``: a step checkpoint (``lmdeq train --checkpoint-every``) is committed: the mid-epoch
  ``last.pt`` is in place;
* ``epoch-end``: the epoch's record is computed (and handed to the step logs), nothing of it committed yet;
* ``<file>:partial``: half of the temporary file of ``<file>`` is written (``last.pt``, ``best.pt``,
  ``metrics.jsonl``, ``config.json``, ``decoded-cache``);
* ``<file>:written``: the temporary file is complete and fsync'ed, not yet renamed over ``<file>``;
* ``<file>:renamed``: ``<file>`` is in place (for ``last.pt``: the epoch is committed);
* ``extract:member``: an archive extraction has written its first member;
* ``kernels:case``: the kernel benchmark has written the results of one more case (lmdeq/app/bench/kernels.py).
"""
from __future__ import annotations

import os
import signal
import time

ENV = "LMDEQ_FAULT_AT"
HANG_ENV = "LMDEQ_HANG_AT"
QUALIFIERS = {"rank": "RANK", "attempt": "TORCHELASTIC_RESTART_COUNT"}  # qualifier -> the variable it tests
_DEFAULTS = {"RANK": "0", "TORCHELASTIC_RESTART_COUNT": "0"}
_seen: dict[str, int] = {}
_seen_hang: dict[str, int] = {}


def _applies_here(qualifiers: list[str]) -> bool:
    for q in qualifiers:
        key, _, value = q.partition("=")
        var = QUALIFIERS.get(key.strip())
        if var is None:
            raise ValueError(f"{ENV}: unknown qualifier {q!r} (known: {sorted(QUALIFIERS)})")
        if os.environ.get(var, _DEFAULTS[var]) != value.strip():
            return False
    return True


def _reached(target: str | None, name: str, seen: dict) -> bool:
    """Whether ``target`` (a point spec of LMDEQ_FAULT_AT / LMDEQ_HANG_AT) names this point, occurrence and
    process; counts the occurrences of ``name`` in ``seen``."""
    if not target:
        return False
    spec, *qualifiers = target.split(";")
    point, _, nth = spec.partition("@")
    if point != name or not _applies_here(qualifiers):
        return False
    seen[name] = seen.get(name, 0) + 1
    return seen[name] == (int(nth) if nth else 1)


def fault_point(name: str) -> None:
    """SIGKILL this process if ``LMDEQ_FAULT_AT`` names this point (and occurrence, and process); sleep until
    killed if ``LMDEQ_HANG_AT`` does."""
    if _reached(os.environ.get(ENV), name, _seen):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached(os.environ.get(HANG_ENV), name, _seen_hang):
        print(f"{HANG_ENV}={os.environ[HANG_ENV]}: hanging here until killed", flush=True)
        while True:
            time.sleep(3600)
