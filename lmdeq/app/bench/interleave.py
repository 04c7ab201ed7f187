"""Interleaved timing of compared methods, and the statistics the benchmarks report.

On a shared machine the load drifts while a benchmark runs. Timing each method's repeats in one block
(AAA BBB CCC) turns that drift into a fake ratio; here the methods alternate round by round after the
warm-up (A B C, A B C, ...), so every round sees the methods under nearly the same load, and a ratio
is computed per round (t_A[k] / t_B[k]) before it is summarised.

Per method (and per ratio) the report is the median with its spread: min, max, the quartiles q1, q3
(``statistics.quantiles``, 'inclusive' method: linear interpolation between order statistics, the
values themselves for n = 1) and the interquartile range q3 - q1.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Mapping, Sequence

from ... import checks

__all__ = ["interleaved", "interleaved_rounds", "spread", "round_ratios", "ratio_spread"]


def interleaved(measurements: Mapping[str, Callable[[], float]], rounds: int, warmup: int = 0
                ) -> Dict[str, List[float]]:
    """``rounds`` values of every ``measurements[name]()`` (a call that measures something and returns
    it, e.g. a timer's median): first ``warmup`` rounds whose values are dropped, then the kept rounds;
    a round calls the methods once each in the order of the mapping."""
    rounds = checks.integer("rounds", rounds, 1)
    warmup = checks.integer("warmup", warmup, 0)
    if not measurements:
        raise ValueError("the methods to compare must name at least one method")
    for _ in range(warmup):
        for measure in measurements.values():
            measure()
    values: Dict[str, List[float]] = {name: [] for name in measurements}
    for _ in range(rounds):
        for name, measure in measurements.items():
            values[name].append(float(measure()))
    return values


def interleaved_rounds(fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1,
                       sync: Callable[[], None] = lambda: None,
                       clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds per call of every ``fns[name]()``, ``rounds`` values each (:func:`interleaved` of timed
    calls: ``warmup`` untimed rounds first). ``sync()`` runs before each clock read (a device
    synchronisation)."""
    def timed(fn):
        def measure():
            sync()
            t0 = clock()
            fn()
            sync()
            return clock() - t0
        return measure

    return interleaved({name: timed(fn) for name, fn in fns.items()}, rounds, warmup)


def spread(xs: Sequence[float]) -> Dict[str, float]:
    """median, min, max, q1, q3, iqr and n of ``xs`` (see the module docstring)."""
    xs = [float(x) for x in xs]
    if not xs:
        raise ValueError("spread of an empty sequence")
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "q1": q1, "q3": q3,
            "iqr": q3 - q1, "n": len(xs)}


def round_ratios(num: Sequence[float], den: Sequence[float]) -> List[float]:
    """num[k] / den[k] for each round k (both from the same interleaved run)."""
    if len(num) != len(den):
        raise ValueError(f"ratio of rounds needs equal lengths, got {len(num)} and {len(den)}")
    return [a / b for a, b in zip(num, den)]


def ratio_spread(num: Sequence[float], den: Sequence[float]) -> Dict[str, float]:
    """:func:`spread` of the per-round ratios num[k] / den[k]."""
    return spread(round_ratios(num, den))
