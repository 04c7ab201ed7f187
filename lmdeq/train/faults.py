"""Named fault points: the exact instants at which the crash tests kill a run.

``LMDEQ_FAULT_AT=<point>`` (or ``<point>@<n>``: its n-th occurrence, default 1) makes the process
SIGKILL itself when it reaches that point, so a test can stop a run at an exact instant instead of by
luck of timing. Unset (always, outside tests) it costs one environment lookup per point. The points:

* ``step``: after an optimiser step (and its constraint upkeep);
* ``epoch-end``: the epoch's record is computed, nothing of the epoch is written yet;
* ``<file>:partial``: half of the temporary file of ``<file>`` is written (``last.pt``, ``best.pt``,
  ``metrics.jsonl``, ``decoded-cache``);
* ``<file>:written``: the temporary file is complete and fsync'ed, not yet renamed over ``<file>``;
* ``<file>:renamed``: ``<file>`` is in place (for ``last.pt``: the epoch is committed);
* ``extract:member``: an archive extraction has written its first member.
"""
from __future__ import annotations

import os
import signal

ENV = "LMDEQ_FAULT_AT"
_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if ``LMDEQ_FAULT_AT`` names this point (and occurrence)."""
    target = os.environ.get(ENV)
    if not target:
        return
    point, _, nth = target.partition("@")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
