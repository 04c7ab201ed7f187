"""Argument checks used by every layer: one function per kind of value, one exception type per kind of mistake.

* a value of the wrong type (a str or a bool where a count goes, a float where an int goes):
  :class:`~lmdeq.errors.ConfigTypeError`, which is a ``TypeError`` and (through ConfigError) a ``ValueError``;
* a value of the right type that cannot work (out of range, not finite, not one of the choices):
  :class:`~lmdeq.errors.ConfigError`, a ``ValueError``.

Both are :class:`~lmdeq.errors.LmdeqError`: the command line prints them as one line. Every message reads
``<where><name> must be <what>, got <value>``; ``where`` names the function or the config (e.g.
``"lmdeq.ops.anderson_mix: "``). Bools are never numbers here (``True`` is not a step count). Each check returns
the value as the plain Python type it promises (an ``int`` for a NumPy or tensor integer, a ``float``).
"""
from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Iterable, Optional

from .errors import ConfigError, ConfigTypeError

__all__ = ["integer", "count", "number", "damping", "boolean", "choice"]


def _got(value) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (int, float)) else repr(value)


def integer(name: str, value, minimum: Optional[int] = None, *, where: str = "") -> int:
    """``value`` as an int (any ``numbers.Integral`` but bool), >= ``minimum`` when given."""
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigTypeError(f"{where}{name} must be an int{bound}, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}{name} must be an int{bound}, got {value!r}")
    return int(value)


def count(name: str, value, minimum: int = 0, *, where: str = "") -> int:
    """``value`` as a step count >= ``minimum``: an int, anything with ``__index__`` (an integer tensor or NumPy
    scalar, as ``range()`` accepts) or a float with an integral value (TorchDEQ's cores compute
    ``f_max_iter // n_states``, a float when ``f_max_iter`` is one)."""
    if isinstance(value, bool):
        raise ConfigTypeError(f"{where}{name} must be an int >= {minimum}, got a bool")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        steps = operator.index(value)
    except TypeError:
        raise ConfigTypeError(f"{where}{name} must be an int >= {minimum} (or an integer tensor), got "
                              f"{_got(value)}") from None
    if steps < minimum:
        raise ConfigError(f"{where}{name} must be an int >= {minimum}, got {steps}")
    return steps


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def number(name: str, value, low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
           high_open: bool = False, where: str = "") -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (closed ends unless ``low_open`` /
    ``high_open``; None: unbounded). Any real number but a bool, or a one-element tensor or array."""
    what = ("a number" if low is not None and high is not None else "a finite number") + _interval(
        low, high, low_open, high_open)
    try:
        if isinstance(value, (bool, str, bytes)) or not (isinstance(value, numbers.Real) or hasattr(value, "__float__")):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError, RuntimeError):   # (a tensor of several elements has no single value)
        raise ConfigTypeError(f"{where}{name} must be {what}, got {_got(value)}") from None
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ConfigError(f"{where}{name} must be {what}, got {value!r}")
    return v


def damping(name: str, value, *, where: str = "") -> float:
    """A damping factor tau in (0, 1] (z <- (1 - tau) z + tau f(z))."""
    return number(name, value, 0, 1, low_open=True, where=where)


def boolean(name: str, value, *, where: str = "") -> bool:
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{where}{name} must be a bool, got {_got(value)}")
    return value


def env_flag(name: str, default: bool) -> bool:
    """The environment variable ``name`` as a switch: unset -> ``default``, '1' -> True, '0' -> False, anything
    else (an empty value too) a ConfigError naming the variable."""
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip() not in ("0", "1"):
        raise ConfigError(f"{name} must be 0 or 1 (or unset), got {value!r}")
    return value.strip() == "1"


def choice(name: str, value, options: Iterable, *, where: str = ""):
    """``value`` if it is one of ``options`` (compared with ==; an unhashable value is simply not one)."""
    options = tuple(options)
    if not any(type(value) is type(o) and value == o for o in options):
        raise ConfigError(f"{where}{name} must be one of {options}, got {value!r}")
    return value
