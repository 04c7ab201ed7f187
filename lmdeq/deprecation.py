"""Deprecation warnings that point at the caller's code: the first frame outside lmdeq (and outside the import
machinery, for a moved module), wherever inside lmdeq the deprecated spelling was noticed."""
from __future__ import annotations

import os
import sys
import warnings

__all__ = ["deprecated"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_PACKAGE) or name.startswith("<frozen importlib")):
            return level
        frame, level = frame.f_back, level + 1
    return level


def deprecated(message: str) -> None:
    """``warnings.warn(message, DeprecationWarning)`` attributed to the first frame outside lmdeq."""
    warnings.warn(message, DeprecationWarning, stacklevel=_outside_stacklevel())
