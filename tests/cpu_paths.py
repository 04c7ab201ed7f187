"""Outcome classes of every solver call in a test run, for the CPU code-path check (scripts/cpu_paths.py).

A test that compares with another library, or with a stored number, at the rounding floor can pass on one
CPU and fail on another: its result depends on the rounding of the CPU's code path (MKL's branch, oneDNN's
ISA), not on the code under test. scripts/cpu_paths.py reruns the solver and contract tests under other code
paths; with ``LMDEQ_TEST_OUTCOMES=<file>`` set, this plugin (loaded by tests/conftest.py) appends one JSON line
per test verdict and per solver call (lmdeq's and TorchDEQ's), and the script fails if a verdict or the class
of a result changes between code paths:

    finite       every part of the returned state is finite
    converged    per sample: the lowest residual of the stop mode is below tol

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

    finite = all(bool(torch.isfinite(p).all()) for p in _parts(z))
    lowest = info[f"{stop_mode}_lowest"] if f"{stop_mode}_lowest" in info else None
    converged = None if lowest is None else [bool(v) for v in (lowest.detach().float().cpu() < tol)]
    return {"finite": finite, "converged": converged}


def _recording(library: str, name: str, fn: Callable) -> Callable:
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if _state["paused"]:
            return out
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            stop_mode, tol = bound.arguments.get("stop_mode", "abs"), float(bound.arguments.get("tol", 1e-3))
        except (TypeError, ValueError):
            return out    # a call the solver itself refuses: the test asserts on that, not on a result
        test = _current_test()
        index = _state["calls"][test] = _state["calls"].get(test, -1) + 1
        _write({"kind": "call", "test": test, "index": index, "solver": f"{library}:{name}",
                **outcome_class(out[0], out[2], stop_mode, tol)})
        return out

    wrapper.__lmdeq_recording__ = True
    return wrapper


def _wrap_registry(registry: dict, library: str) -> None:
    for name, fn in list(registry.items()):
        if callable(fn) and not getattr(fn, "__lmdeq_recording__", False):
            registry[name] = _recording(library, name, fn)


def install() -> None:
    """Wrap lmdeq's and TorchDEQ's solvers (registries and module attributes) with recorders."""
    import lmdeq.solvers as ours

    wrapped = {}
    for registry in (ours.SOLVERS, ours.TORCHDEQ_SOLVERS):
        _wrap_registry(registry, "lmdeq")
        wrapped.update({fn.__wrapped__: fn for fn in registry.values()})
    for attr, fn in list(vars(ours).items()):
        if callable(fn) and fn in wrapped:
            setattr(ours, attr, wrapped[fn])
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
