"""Use lmdeq's solvers inside TorchDEQ (optional dependency ``torchdeq==0.1.0``).

    from lmdeq.integrations import torchdeq as lmdeq_torchdeq
    lmdeq_torchdeq.register()                 # adds lmdeq_fixed_point, lmdeq_anderson, lmdeq_broyden, lmdeq_authors_anderson
    lmdeq_torchdeq.register(replace=True)     # ... and takes over TorchDEQ's own four names

With ``replace=True`` existing TorchDEQ code and command lines (``add_deq_args``: ``--f_solver anderson
--b_solver broyden``) switch to lmdeq's solvers with this one call, made before the DEQ is built
(``get_deq`` looks the names up when it is constructed). Under TorchDEQ's names the observable
contract is TorchDEQ's (:mod:`lmdeq.integrations.torchdeq_solvers`); under the ``lmdeq_*`` names it is
lmdeq's (:mod:`lmdeq.solvers.info`). :func:`unregister` puts TorchDEQ's registry back as it was, and
:func:`registered` does both around a block::

    with lmdeq_torchdeq.registered(replace=True):
        deq = torchdeq.get_deq(args)

Jacobian regularisation: :func:`jac_reg` and :func:`power_method` here are lmdeq's
(:mod:`lmdeq.deq.jacobian`) under TorchDEQ's names and signatures (the same values as TorchDEQ's with the
same seed; list states too). ``register(replace=True)`` also makes TorchDEQ's own names mean them:
``torchdeq.loss.jacobian.jac_reg`` / ``power_method`` and their re-exports ``torchdeq.loss.*`` and
``torchdeq.*``, and the ``power_method`` that TorchDEQ's cores use for their spectral-radius estimate
(``torchdeq.core.power_method``), so a TorchDEQ training script's JR loss (``from torchdeq.loss import
jac_reg``, imported after the call) runs lmdeq's; :func:`unregister` puts TorchDEQ's back. A script that
imported the names before ``register`` keeps the functions it holds.

Without touching a script at all::

    python -m lmdeq.integrations.torchdeq train.py --f_solver anderson --ift ...

runs ``train.py`` (with its arguments) after ``register(replace=True)``.
"""
from __future__ import annotations

import importlib
import os
import runpy
import sys
from contextlib import contextmanager

from .. import checks
from ..deq import jac_reg, power_method
from . import torchdeq_options
from .torchdeq_solvers import LMDEQ_SOLVERS, TORCHDEQ_SOLVERS

__all__ = ["register", "unregister", "registered", "main", "NAMES", "TORCHDEQ_NAMES", "LOSS_NAMES", "jac_reg",
           "power_method"]

NAMES = dict(LMDEQ_SOLVERS)
TORCHDEQ_NAMES = dict(TORCHDEQ_SOLVERS)
# TorchDEQ's Jacobian functions, and the modules that hold them under these names (defining, re-exporting or
# using them); register(replace=True) points each name that a module has at lmdeq's function.
LOSS_NAMES = {"jac_reg": jac_reg, "power_method": power_method}
_LOSS_MODULES = ("torchdeq.loss.jacobian", "torchdeq.loss", "torchdeq", "torchdeq.core")

_MISSING = object()
_saved: dict = {}   # name -> TorchDEQ's entry before lmdeq first registered it (_MISSING: there was none)
_saved_attrs: dict = {}   # (module, name) -> TorchDEQ's function before register(replace=True) replaced it


def _loss_slots() -> list:
    """(module, name) of every TorchDEQ module attribute that :data:`LOSS_NAMES` replaces."""
    slots = []
    for module_name in _LOSS_MODULES:
        module = importlib.import_module(module_name)
        slots += [(module, name) for name in LOSS_NAMES if hasattr(module, name)]
    return slots


def _patch_losses() -> None:
    for module, name in _loss_slots():
        _saved_attrs.setdefault((module.__name__, name), getattr(module, name))
        setattr(module, name, LOSS_NAMES[name])


def _restore_losses() -> list:
    """Put TorchDEQ's functions back where lmdeq's still stand; returns the restored 'module.name's."""
    restored = []
    for (module_name, name), before in list(_saved_attrs.items()):
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, name, None) is LOSS_NAMES[name]:
            setattr(module, name, before)
            restored.append(f"{module_name}.{name}")
        del _saved_attrs[(module_name, name)]
    return restored


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
    ``broyden``, ``fixed_point_iter`` and ``simple_fixed_point_iter``, and lmdeq's ``jac_reg`` and
    ``power_method`` under TorchDEQ's (see the module docstring). Returns the solver names registered.
    Raises ImportError with install advice when TorchDEQ is missing."""
    registry = _registry()
    entries = _entries(replace)
    for name, fn in entries.items():
        _saved.setdefault(name, registry.get(name, _MISSING))
        registry[name] = fn
    if replace:
        _patch_losses()
        torchdeq_options.install()   # one warning naming the DEQ options nothing reads
    return sorted(entries)


def unregister() -> list:
    """Undo :func:`register`: every name it set is restored to TorchDEQ's own solver (or removed, for
    the ``lmdeq_*`` names), unless something else has re-registered that name since, and TorchDEQ's
    ``jac_reg`` / ``power_method`` where lmdeq's replaced them. Returns the solver names restored."""
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
    _restore_losses()
    torchdeq_options.uninstall()
    return sorted(restored)


@contextmanager
def registered(replace: bool = False):
    """``register(replace)`` for the duration of a ``with`` block; afterwards every name it touched has
    exactly the entry it had before (also when the block raises). Yields the names registered."""
    registry = _registry()
    entries = _entries(replace)
    before = {name: registry.get(name, _MISSING) for name in entries}
    saved = dict(_saved)
    attrs = [(module, name, getattr(module, name)) for module, name in _loss_slots()] if replace else []
    saved_attrs = dict(_saved_attrs)
    watching = torchdeq_options.installed()
    try:
        yield register(replace)
    finally:
        if not watching:
            torchdeq_options.uninstall()
        for name, fn in before.items():
            if fn is _MISSING:
                registry.pop(name, None)
            else:
                registry[name] = fn
        _saved.clear()
        _saved.update(saved)
        for module, name, fn in attrs:
            setattr(module, name, fn)
        _saved_attrs.clear()
        _saved_attrs.update(saved_attrs)


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
