"""argparse value types shared by the ``lmdeq`` subcommands: a bad value is an argparse error naming the
flag (exit status 2), never a substitution."""
from __future__ import annotations

import argparse


def int_at_least(lowest: int, kind: str):
    """An argparse type: an integer >= ``lowest`` (``kind`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
        if v < lowest:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {v}")
        return v
    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")
