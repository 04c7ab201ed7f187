"""Outcome classes of every solver call in a test run, for the CPU code-path check (scripts/cpu_paths.py).

A test that compares with another library, or with a stored number, at the rounding floor can pass on one
CPU and fail on another: its result depends on the rounding of the CPU's code path (MKL's branch, oneDNN's
ISA), not on the code under test. scripts/cpu_paths.py reruns the solver and contract tests under other code
paths; with ``LMDEQ_TEST_OUTCOMES=<file>`` set, this plugin (loaded by tests/conftest.py) appends one JSON line
per test verdict and per solve (lmdeq's solver objects and its TorchDEQ adapter, and TorchDEQ's solvers), and the
script fails if a verdict or the class of a result changes between code paths:

    finite       every part of the returned state is finite
    converged    per sample: the lowest residual of the stop mode is below tol (not recorded for a tol below
                 1000 ulp of the state's dtype, e.g. the tol=1e-30 of a solve meant to run to max_iter: whether
                 a residual of rounding noise is below it is the CPU's rounding, not a result)

A test may call a solver in a regime it knowingly does not assert on (a probe that runs into the floor):
:func:`unrecorded` leaves such calls out. Without ``LMDEQ_TEST_OUTCOMES`` nothing is wrapped or written.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from typing import Callable

ENV = "LMDEQ_TEST_OUTCOMES"
_state = {"paused": 0, "calls": {}}


@contextlib.contextmanager
def unrecorded():
    """Solver calls inside this block are not recorded."""
    _state["paused"] += 1
    try:
        yield
    finally:
        _state["paused"] -= 1


def _write(record: dict) -> None:
    with open(os.environ[ENV], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]


def _parts(z):
    return list(z) if isinstance(z, (list, tuple)) else [z]


def outcome_class(z, info, stop_mode: str, tol: float) -> dict:
    """The class of a solve's result: finite state, converged samples."""
    import torch

    parts = _parts(z)
    finite = all(bool(torch.isfinite(p).all()) for p in parts)
    lowest = info[f"{stop_mode}_lowest"] if f"{stop_mode}_lowest" in info else None
    floor = 1000 * max(torch.finfo(p.dtype).eps for p in parts if p.is_floating_point()) \
        if any(p.is_floating_point() for p in parts) else 0.0
    converged = None if lowest is None or tol < floor else [bool(v) for v in (lowest.detach().float().cpu() < tol)]
    return {"finite": finite, "converged": converged}


class _Recording:
    """A solver function that records the class of each result. It compares (and hashes) equal to the function
    it wraps, so that code which recognises a solver function behaves as without it."""

    def __init__(self, library: str, name: str, fn: Callable):
        functools.update_wrapper(self, fn)
        self.library, self.name, self.signature = library, name, inspect.signature(fn)

    def __eq__(self, other):
        return other is self or other is self.__wrapped__ or (
            isinstance(other, _Recording) and other.__wrapped__ is self.__wrapped__)

    def __hash__(self):
        return hash(self.__wrapped__)

    def __call__(self, *args, **kwargs):
        out = self.__wrapped__(*args, **kwargs)
        if _state["paused"]:
            return out
        try:
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            stop_mode, tol = bound.arguments.get("stop_mode", "abs"), float(bound.arguments.get("tol", 1e-3))
        except (TypeError, ValueError):
            return out    # a call the solver itself refuses: the test asserts on that, not on a result
        test = _current_test()
        index = _state["calls"][test] = _state["calls"].get(test, -1) + 1
        _write({"kind": "call", "test": test, "index": index, "solver": f"{self.library}:{self.name}",
                **outcome_class(out[0], out[2], stop_mode, tol)})
        return out


def _wrap_registry(registry: dict, library: str, names=None) -> None:
    for name, fn in list(registry.items()):
        if (names is None or name in names) and callable(fn) and not isinstance(fn, _Recording):
            registry[name] = _Recording(library, name, fn)


def _recording_run(run: Callable) -> Callable:
    """``Solver.run`` that records the class of each result (settings from the solver object)."""

    @functools.wraps(run)
    def recorded(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        if _state["paused"]:
            return out
        test = _current_test()
        index = _state["calls"][test] = _state["calls"].get(test, -1) + 1
        _write({"kind": "call", "test": test, "index": index, "solver": f"lmdeq:{self.name}",
                **outcome_class(out[0], out[2], self.stop_mode, float(self.tol))})
        return out

    recorded.recording = True
    return recorded


def install() -> None:
    """Wrap lmdeq's and TorchDEQ's solvers with recorders: every lmdeq solve goes through ``Solver.run`` (the
    solver objects' ``solve`` and the TorchDEQ adapter's functions alike) except the adapter's
    ``simple_fixed_point_iter``, wrapped in the adapter's registry and module; TorchDEQ's solvers in its
    registry and module attributes."""
    from lmdeq.integrations import torchdeq_solvers as adapter
    from lmdeq.solvers import Solver

    if not getattr(Solver.run, "recording", False):
        Solver.run = _recording_run(Solver.run)
    _wrap_registry(adapter.TORCHDEQ_SOLVERS, "lmdeq", names=("simple_fixed_point_iter",))
    adapter.simple_fixed_point_iter = adapter.TORCHDEQ_SOLVERS["simple_fixed_point_iter"]
    try:
        import torchdeq.solver as theirs
    except ImportError:
        return
    registry = getattr(theirs, "_solvers", {})
    originals = dict(registry)
    _wrap_registry(registry, "torchdeq")
    for attr, fn in list(vars(theirs).items()):
        for name, original in originals.items():
            if fn is original:
                setattr(theirs, attr, registry[name])


def pytest_configure(config):
    if os.environ.get(ENV):
        install()


def pytest_runtest_logreport(report):
    if os.environ.get(ENV) and (report.when == "call" or report.outcome != "passed"):
        _write({"kind": "verdict", "test": report.nodeid, "when": report.when, "outcome": report.outcome})
