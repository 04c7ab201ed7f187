"""argparse value types shared by the ``lmdeq`` subcommands and scripts: a bad value is an argparse error naming
the flag (exit status 2, one line), never a substitution and never a traceback later.

Every flag that takes a value has one of these types (tests/test_cli_fuzz.py tries every flag of every
parser with empty, huge, negative, non-finite, unicode and wrong-type values):

* integers: :func:`int_in` (a range; ``positive_int`` and ``non_negative_int`` counts up to 2**31 - 1,
  ``seed`` up to 2**63 - 1, what torch's generators take);
* floats: :func:`float_in` (finite and below 2**63 in magnitude, a range, open or closed ends);
* text: :func:`text` (a path, a name: not empty, no NUL); :func:`output_file` / :func:`output_dir` (where
  results go: a writable directory, checked before any work); :func:`file_tag` (a file-name suffix);
  :func:`name_list` (comma-separated names, possibly none).
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Optional

SEED_MAX = 2 ** 63 - 1    # what torch's generators take
COUNT_MAX = 2 ** 31 - 1   # any count (epochs, a batch size, workers, steps) beyond this is a typo
FLOAT_MAX = 2.0 ** 63     # any rate, decay, norm or budget this large is a typo


def int_in(lowest: int, highest: Optional[int] = None, kind: str = "an"):
    """An argparse type: an integer in [lowest, highest] (``kind`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} integer, got {text!r}") from None
        if v < lowest or (highest is not None and v > highest):
            span = f">= {lowest}" if highest is None else f"in [{lowest}, {highest}]"
            raise argparse.ArgumentTypeError(f"expected {kind} integer ({span}), got {v}")
        return v
    return parse


positive_int = int_in(1, COUNT_MAX, "a positive")
non_negative_int = int_in(0, COUNT_MAX, "a non-negative")
seed = int_in(0, SEED_MAX, "a seed: a non-negative")


def float_in(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
             high_open: bool = False, kind: str = "a"):
    """An argparse type: a finite float within the bounds given (open or closed), and below :data:`FLOAT_MAX` in
    magnitude where no bound is given."""
    def parse(text: str) -> float:
        try:
            v = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} number, got {text!r}") from None
        bad = not math.isfinite(v) or abs(v) >= FLOAT_MAX or \
            (low is not None and (v <= low if low_open else v < low)) or \
            (high is not None and (v >= high if high_open else v > high))
        if bad:
            lo = "(-2**63" if low is None else f"{'(' if low_open else '['}{low:g}"
            hi = "2**63)" if high is None else f"{high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"expected {kind} number in {lo}, {hi}, got {text!r}")
        return v
    return parse


finite_float = float_in(kind="a finite")
non_negative_float = float_in(0.0, kind="a non-negative")
positive_float = float_in(0.0, low_open=True, kind="a positive")


def text(kind: str = "a value"):
    """An argparse type: non-empty text without NUL characters (a path or a name)."""
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"expected {kind}, got an empty string")
        if "\x00" in value:
            raise argparse.ArgumentTypeError(f"expected {kind}, got text with a NUL character")
        return value
    return parse


path = text("a path")


def device(value: str) -> str:
    """An argparse type: 'auto', 'cpu', 'cuda' or 'cuda:N' (whether that GPU exists is checked when it is used)."""
    import torch

    value = text("a device")(value)
    if value == "auto":
        return value
    try:
        parsed = torch.device(value)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def dtype_list(value: str) -> str:
    """An argparse type: comma-separated floating torch dtypes by name (float32,bfloat16)."""
    import torch

    names = [n.strip() for n in text("dtypes")(value).split(",") if n.strip()]
    bad = [n for n in names if not isinstance(getattr(torch, n, None), torch.dtype)
           or not getattr(torch, n).is_floating_point]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated floating dtypes (float32, float16, bfloat16, "
                                         f"float64), got {value!r}")
    return ",".join(names)


def preset(value: str) -> str:
    """An argparse type: a model preset of :data:`lmdeq.models.PRESETS`."""
    from ..models import PRESETS

    if value not in PRESETS:
        raise argparse.ArgumentTypeError(f"expected a preset ({', '.join(sorted(PRESETS))}), got {value!r}")
    return value


def _writable_dir(directory: str) -> bool:
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def output_file(value: str) -> str:
    """An argparse type: a file to write (or a stem, extensions added): its directory must exist, writable."""
    value = path(value)
    parent = os.path.dirname(os.path.abspath(value))
    if not _writable_dir(parent):
        raise argparse.ArgumentTypeError(f"cannot write {value!r}: {parent} is not a writable directory"
                                         + ("" if os.path.exists(parent) else " (it does not exist)"))
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"cannot write {value!r}: it is a directory")
    return value


def output_dir(value: str) -> str:
    """An argparse type: a directory to write into, made if missing: it (or its nearest existing ancestor) must
    be a writable directory."""
    value = path(value)
    probe = os.path.abspath(value)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not _writable_dir(probe):
        what = "not a directory" if not os.path.isdir(probe) else "not writable"
        raise argparse.ArgumentTypeError(f"cannot write into {value!r}: {probe} is {what}")
    return value


def file_tag(value: str) -> str:
    """An argparse type: a suffix for result file names (may be empty): letters, digits, '.', '_', '+', '-'."""
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._+-"))})
    if bad:
        raise argparse.ArgumentTypeError(f"a file-name tag may hold letters, digits and . _ + - only, got {value!r}")
    return value


def name_list(value: str) -> str:
    """An argparse type: comma-separated names (letters, digits, '_'), possibly none at all ('')."""
    bad = [n for n in value.split(",") if n.strip() and not n.strip().replace("_", "").isalnum()]
    if bad or "\x00" in value:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {value!r}")
    return value
