"""Use lmdeq's solvers inside TorchDEQ (optional dependency ``torchdeq==0.1.0``).

    from lmdeq.integrations import torchdeq as lmdeq_torchdeq
    lmdeq_torchdeq.register()                 # adds lmdeq_fixed_point, lmdeq_anderson, lmdeq_broyden, lmdeq_authors_anderson
    lmdeq_torchdeq.register(replace=True)     # ... and takes over TorchDEQ's own four names

With ``replace=True`` existing TorchDEQ code and command lines (``add_deq_args``: ``--f_solver anderson
--b_solver broyden``) switch to lmdeq's solvers with this one call, made before the DEQ is built
(``get_deq`` looks the names up when it is constructed). Under TorchDEQ's names the observable
contract is TorchDEQ's (:mod:`lmdeq.solvers.torchdeq_contract`); under the ``lmdeq_*`` names it is
lmdeq's (:mod:`lmdeq.solvers.info`). :func:`unregister` puts TorchDEQ's registry back as it was, and
:func:`registered` does both around a block::

    with lmdeq_torchdeq.registered(replace=True):
        deq = torchdeq.get_deq(args)

Without touching a script at all::

    python -m lmdeq.integrations.torchdeq train.py --f_solver anderson --ift ...

runs ``train.py`` (with its arguments) after ``register(replace=True)``.
"""
from __future__ import annotations

import os
import runpy
import sys
from contextlib import contextmanager

from .. import checks
from ..solvers import SOLVERS, TORCHDEQ_SOLVERS

__all__ = ["register", "unregister", "registered", "main", "NAMES", "TORCHDEQ_NAMES"]

NAMES = {f"lmdeq_{name}": fn for name, fn in SOLVERS.items()}
TORCHDEQ_NAMES = dict(TORCHDEQ_SOLVERS)

_MISSING = object()
_saved: dict = {}   # name -> TorchDEQ's entry before lmdeq first registered it (_MISSING: there was none)


def _registry() -> dict:
    """TorchDEQ's solver registry (the dict its ``get_solver`` reads at every call)."""
    try:
        from torchdeq import solver
    except ImportError as exc:  # pragma: no cover - exercised only without torchdeq
        raise ImportError("lmdeq.integrations.torchdeq needs TorchDEQ: pip install 'torchdeq==0.1.0'") from exc
    registry = getattr(solver, "_solvers", None)
    if not isinstance(registry, dict):  # pragma: no cover - a TorchDEQ other than 0.1.0
        raise ImportError(f"unsupported TorchDEQ {getattr(__import__('torchdeq'), '__version__', '?')}: "
                          "lmdeq.integrations.torchdeq supports torchdeq==0.1.0")
    return registry


def _entries(replace: bool) -> dict:
    checks.boolean("replace", replace)
    return {**NAMES, **(TORCHDEQ_NAMES if replace else {})}


def register(replace: bool = False) -> list:
    """Register ``lmdeq_<name>`` for every lmdeq solver (fixed_point, anderson, broyden, authors_anderson) in TorchDEQ's solver
    registry and, with ``replace=True``, lmdeq's solvers under TorchDEQ's names ``anderson``,
    ``broyden``, ``fixed_point_iter`` and ``simple_fixed_point_iter``. Returns the names registered.
    Raises ImportError with install advice when TorchDEQ is missing."""
    registry = _registry()
    entries = _entries(replace)
    for name, fn in entries.items():
        _saved.setdefault(name, registry.get(name, _MISSING))
        registry[name] = fn
    return sorted(entries)


def unregister() -> list:
    """Undo :func:`register`: every name it set is restored to TorchDEQ's own solver (or removed, for
    the ``lmdeq_*`` names), unless something else has re-registered that name since. Returns the names
    restored."""
    registry = _registry()
    restored = []
    for name, before in list(_saved.items()):
        if registry.get(name) is _entries(True)[name]:
            if before is _MISSING:
                del registry[name]
            else:
                registry[name] = before
            restored.append(name)
        del _saved[name]
    return sorted(restored)


@contextmanager
def registered(replace: bool = False):
    """``register(replace)`` for the duration of a ``with`` block; afterwards every name it touched has
    exactly the entry it had before (also when the block raises). Yields the names registered."""
    registry = _registry()
    entries = _entries(replace)
    before = {name: registry.get(name, _MISSING) for name in entries}
    saved = dict(_saved)
    try:
        yield register(replace)
    finally:
        for name, fn in before.items():
            if fn is _MISSING:
                registry.pop(name, None)
            else:
                registry[name] = fn
        _saved.clear()
        _saved.update(saved)


USAGE = """usage: python -m lmdeq.integrations.torchdeq SCRIPT [ARGS ...]

Runs the TorchDEQ script SCRIPT with ARGS, unchanged, after lmdeq.integrations.torchdeq.register(replace=True):
TorchDEQ's solver names (anderson, broyden, fixed_point_iter, simple_fixed_point_iter) then mean lmdeq's
solvers, in configs and on add_deq_args command lines alike."""


def main(argv=None) -> int:
    """``python -m lmdeq.integrations.torchdeq SCRIPT [ARGS ...]``: run SCRIPT as ``__main__`` (its
    directory first on ``sys.path``, ``sys.argv = [SCRIPT, *ARGS]``) with lmdeq's solvers registered under
    TorchDEQ's names. Returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    script = argv[0]
    if not os.path.isfile(script):
        print(f"lmdeq.integrations.torchdeq: SCRIPT {script!r} is not a file\n\n{USAGE}", file=sys.stderr)
        return 2
    register(replace=True)
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run the canonical module's main (not this __main__ copy), so register() and unregister() share state.
    from lmdeq.integrations.torchdeq import main as _main

    sys.exit(_main())
