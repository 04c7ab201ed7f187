"""Running means for per-epoch metrics, and the per-epoch JSONL log.

JSON has no infinities: non-finite numbers are written as null. The log of a run is derived from its
``last.pt`` (which holds every epoch's record) and rewritten whole, atomically, at each epoch end.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..atomic import atomic_write_bytes


class MeanMeter:
    """Weighted running mean: ``mean = sum_i w_i x_i / sum_i w_i`` per key; keys may be absent in a step."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def update(self, values: dict, weight: float = 1.0) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def mean(self, key: str) -> float | None:
        w = self.weights.get(key, 0.0)
        return self.sums[key] / w if w else None

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / w for k, w in self.weights.items() if w}

    def state_dict(self) -> dict:
        """The sums and weights so far (exact floats), for :meth:`load_state_dict`."""
        return {"sums": dict(self.sums), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s sums and weights (ValueError when they are not str -> float maps over
        the same keys)."""
        sums, weights = state["sums"], state["weights"]
        for part in (sums, weights):
            if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, float)
                                                     for k, v in part.items()):
                raise ValueError("a meter's sums and weights must map names to floats")
        if sums.keys() != weights.keys():
            raise ValueError(f"a meter's sums {sorted(sums)} and weights {sorted(weights)} name other keys")
        self.sums, self.weights = dict(sums), dict(weights)


def json_number(x):
    """x as a JSON-safe float: None for None, inf and nan."""
    return float(x) if x is not None and math.isfinite(x) else None


def fmt_number(x, spec: str = ".3g", missing: str = "n/a") -> str:
    """``format(x, spec)``, or ``missing`` for None (for progress bars and report lines)."""
    return missing if x is None else format(x, spec)


def jsonl_text(records: list[dict]) -> str:
    """One JSON object per line (non-finite floats are an error: pass them through :func:`json_number`)."""
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace ``path`` by ``records`` atomically: a crash leaves the old or the new log, never a torn line."""
    atomic_write_bytes(path, jsonl_text(records).encode("utf-8"), fault=Path(path).name)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
