"""Running means for per-epoch metrics, and the per-epoch JSONL log.

JSON has no infinities: non-finite numbers are written as null.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


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


def json_number(x):
    """x as a JSON-safe float: None for None, inf and nan."""
    return float(x) if x is not None and math.isfinite(x) else None


def fmt_number(x, spec: str = ".3g", missing: str = "n/a") -> str:
    """``format(x, spec)``, or ``missing`` for None (for progress bars and report lines)."""
    return missing if x is None else format(x, spec)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def truncate_jsonl(path: str | os.PathLike, last_epoch: int) -> None:
    """Keep only records with ``epoch <= last_epoch`` (atomically): a resumed run rewrites later epochs."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) <= last_epoch]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
