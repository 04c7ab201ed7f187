"""After ``register(replace=True)``: one warning naming the DEQ options that no part of TorchDEQ's DEQ reads, and an
error naming an unknown solver (``f_solver='andersen'``: TorchDEQ's own lookup is a bare ``assert``).

TorchDEQ 0.1.0 reads its DEQ options with ``DEQConfig.get(key, default)``, so a misspelt option
(``f_max_itr=2``) or one it does not have (a bare ``stop_mode='rel'``: it reads ``f_stop_mode`` and
``b_stop_mode``) is silently ignored (its issue #12), and the DEQ runs with the default. With lmdeq's solvers in
place, the DEQ cores' constructors (``DEQIndexing``, ``DEQSliced``, and so ``get_deq``) are watched: the keys
the constructor reads are recorded, and a DEQ option given but read by nothing is named in one UserWarning per
distinct set, with the closest option TorchDEQ has.

Which given keys count as DEQ options: every keyword argument of ``get_deq`` or of a core's constructor and
every key of a dict config (these are DEQ configs by construction), and of an ``argparse.Namespace`` (a whole
training script's arguments) only the keys that look like DEQ options (an ``f_``/``b_``/``eval_`` prefix, a
bare solver setting such as ``stop_mode``, or a near miss of an option TorchDEQ has). Options that other parts of
TorchDEQ read (``add_deq_args``'s: normalisation, dropout, ...) are never reported. Nothing changes in what the
DEQ does.
"""
from __future__ import annotations

import argparse
import contextvars
import difflib
import functools
import warnings
from typing import Dict, Iterable, Optional, Set

__all__ = ["install", "installed", "uninstall", "unread_options", "UnreadOptionWarning"]

_BARE = {"solver", "max_iter", "tol", "stop_mode", "iterations", "solver_kwargs", "x0", "memory", "m", "lam"}
_PREFIXES = ("f_", "b_", "eval_")
_explicit: contextvars.ContextVar = contextvars.ContextVar("lmdeq_torchdeq_explicit", default=frozenset())
_saved: Dict[tuple, object] = {}
_warned: Set[tuple] = set()


class UnreadOptionWarning(UserWarning):
    """A DEQ option was given that no part of TorchDEQ's DEQ reads."""


def _known_options() -> Set[str]:
    """Every option some part of TorchDEQ reads: the ``add_deq_args`` command line's, and ``core``."""
    from torchdeq.utils import add_deq_args

    parser = argparse.ArgumentParser(add_help=False)
    add_deq_args(parser)
    return {a.dest for a in parser._actions} | {"core"}


def _looks_like_option(key: str, known: Iterable[str]) -> bool:
    return key.startswith(_PREFIXES) or key in _BARE or bool(difflib.get_close_matches(key, known, n=1, cutoff=0.8))


def unread_options(given: Dict[str, object], read: Set[str], explicit: Set[str]) -> Dict[str, Optional[str]]:
    """{key: closest option TorchDEQ has or None} of the DEQ options in ``given`` that nothing read."""
    known = _known_options() | read
    out = {}
    for key in sorted(given):
        if key in known or not isinstance(key, str):
            continue
        if key in explicit or _looks_like_option(key, known):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            if key in _BARE and not close:
                close = [f"f_{key}"] if f"f_{key}" in known else []
            out[key] = close[0] if close else None
    return out


def _warn(unread: Dict[str, Optional[str]], where: str) -> None:
    key = (where,) + tuple(sorted(unread))
    if not unread or key in _warned:
        return
    _warned.add(key)
    parts = [f"{k!r}" + (f" (did you mean {hint!r}?)" if hint else "") for k, hint in unread.items()]
    warnings.warn(f"TorchDEQ {where}: the option(s) {', '.join(parts)} are read by no part of the DEQ and have no "
                  "effect (TorchDEQ ignores unknown options; lmdeq says so)", UnreadOptionWarning, stacklevel=3)


def _watched_init(init, where: str):
    @functools.wraps(init)
    def __init__(self, args=None, **kwargs):
        from torchdeq.utils.config import DEQConfig

        reads: Set[str] = set()
        plain_get = DEQConfig.get

        def get(config, key, default=None):
            reads.add(key)
            return plain_get(config, key, default)

        DEQConfig.get = get
        try:
            init(self, args, **kwargs)
        finally:
            DEQConfig.get = plain_get
        explicit = set(kwargs) | set(_explicit.get()) | (set(args) if isinstance(args, dict) else set())
        _warn(unread_options(dict(self.args.config), reads, explicit), where)

    return __init__


def _watched_get_deq(get_deq):
    @functools.wraps(get_deq)
    def wrapper(args=None, **kwargs):
        token = _explicit.set(frozenset(kwargs) | (frozenset(args) if isinstance(args, dict) else frozenset()))
        try:
            return get_deq(args, **kwargs)
        finally:
            _explicit.reset(token)

    return wrapper


def _named_get_solver(get_solver):
    """TorchDEQ's ``get_solver`` whose unknown name is a ConfigError naming it and the closest registered one
    (TorchDEQ's is a bare ``assert``)."""
    @functools.wraps(get_solver)
    def wrapper(key):
        from torchdeq.solver import _solvers

        if key not in _solvers:
            from ..errors import ConfigError

            close = difflib.get_close_matches(str(key), sorted(_solvers), n=1)
            raise ConfigError(f"TorchDEQ solver {key!r} is not registered" + (f" (did you mean {close[0]!r}?)" if close
                                                                            else "") + f"; registered: {sorted(_solvers)}")
        return get_solver(key)

    return wrapper


def _targets():
    import torchdeq
    from torchdeq import core, solver

    return [((core.DEQIndexing, "__init__"), lambda f: _watched_init(f, "DEQIndexing")),
            ((core.DEQSliced, "__init__"), lambda f: _watched_init(f, "DEQSliced")),
            ((core, "get_deq"), _watched_get_deq), ((torchdeq, "get_deq"), _watched_get_deq),
            ((solver, "get_solver"), _named_get_solver), ((core, "get_solver"), _named_get_solver)]


def install() -> None:
    """Watch TorchDEQ's DEQ constructors (idempotent)."""
    for (owner, name), wrap in _targets():
        if (owner, name) not in _saved:
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            _saved[(owner, name)] = original
            setattr(owner, name, wrap(original))


def installed() -> bool:
    return bool(_saved)


def uninstall() -> None:
    """Put TorchDEQ's constructors back."""
    for (owner, name), original in list(_saved.items()):
        setattr(owner, name, original)
        del _saved[(owner, name)]
    _warned.clear()
