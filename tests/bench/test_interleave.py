"""Interleaved timing and its statistics, checked with a fake clock and fake steps (no real timing)."""
import statistics

import pytest

from lmdeq.app.bench.interleave import interleaved, interleaved_rounds, ratio_spread, round_ratios, spread


class FakeClock:
    """A clock that only moves when a fake step says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, dt):
        self.now += dt


def fake_methods(clock, costs, calls):
    """Steps that log their name and advance the clock by costs[name](call index of that method)."""
    counts = {name: 0 for name in costs}

    def make(name):
        def step():
            dt = costs[name](counts[name])
            calls.append(name)
            clock.advance(dt)
            counts[name] += 1
        return step

    return {name: make(name) for name in costs}


def test_methods_alternate_round_by_round_after_the_warmup():
    clock, calls, syncs = FakeClock(), [], []
    fns = fake_methods(clock, {"a": lambda k: 1.0, "b": lambda k: 2.0, "c": lambda k: 3.0}, calls)
    times = interleaved_rounds(fns, rounds=4, warmup=2, clock=clock, sync=lambda: syncs.append(len(calls)))
    assert calls == ["a", "b", "c"] * 6          # 2 warm-up rounds, then 4 timed rounds, ABC each
    assert times == {"a": [1.0] * 4, "b": [2.0] * 4, "c": [3.0] * 4}   # warm-up calls are not timed
    # a sync before and after every call (device work finishes inside its own timing)
    assert syncs == [n for k in range(18) for n in (k, k + 1)]


def test_interleaved_ratios_cancel_a_load_drift_that_blocks_would_not():
    # The machine slows down call after call (load drift): every call costs (1 + 0.05 t) times its work,
    # t = calls so far. Method a does 10 units of work, c one unit: the true ratio is 10.
    clock, calls = FakeClock(), []
    slow = lambda: 1.0 + 0.05 * len(calls)
    fns = fake_methods(clock, {"a": lambda k: 10.0 * slow(), "c": lambda k: 1.0 * slow()}, calls)
    times = interleaved_rounds(fns, rounds=5, warmup=0, clock=clock)
    ratios = round_ratios(times["a"], times["c"])
    # within a round c runs one call after a, so each per-round ratio is 10 (1 + 0.05 t) / (1 + 0.05 (t + 1))
    expected = [10.0 * (1 + 0.05 * t) / (1 + 0.05 * (t + 1)) for t in range(0, 10, 2)]
    assert ratios == pytest.approx(expected, rel=1e-12)
    assert all(abs(r - 10.0) / 10.0 < 0.05 for r in ratios)
    assert spread(ratios)["median"] == pytest.approx(expected[2])
    # timing each method in one block (a a a a a, then c c c c c) under the same drift: a ratio of 8.1
    clock, calls = FakeClock(), []
    fns = fake_methods(clock, {"a": lambda k: 10.0 * slow(), "c": lambda k: 1.0 * slow()}, calls)
    block = {name: interleaved_rounds({name: fn}, rounds=5, warmup=0, clock=clock)[name] for name, fn in fns.items()}
    assert statistics.median(block["a"]) / statistics.median(block["c"]) == pytest.approx(11.0 / 1.35)


def test_spread_of_odd_even_and_single_samples():
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0, "n": 5}
    s = spread([4.0, 1.0, 2.0, 3.0])
    assert (s["median"], s["q1"], s["q3"], s["iqr"]) == (2.5, 1.75, 3.25, 1.5)
    assert spread([7.0]) == {"median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0, "iqr": 0.0, "n": 1}


def test_ratio_spread_is_the_spread_of_per_round_ratios():
    num, den = [10.0, 30.0, 20.0], [1.0, 2.0, 4.0]
    assert round_ratios(num, den) == [10.0, 15.0, 5.0]
    assert ratio_spread(num, den) == spread([10.0, 15.0, 5.0])
    with pytest.raises(ValueError, match="equal lengths"):
        round_ratios([1.0, 2.0], [1.0])


@pytest.mark.parametrize("kwargs, match", [(dict(rounds=0), "rounds"), (dict(rounds=True), "rounds"),
                                           (dict(rounds=2, warmup=-1), "warmup")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        interleaved_rounds({"a": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="spread"):
        spread([])


def test_no_methods_is_an_error():
    with pytest.raises(ValueError, match="at least one method"):
        interleaved_rounds({}, rounds=1)


def test_measurements_alternate_and_warmup_values_are_dropped():
    calls = []
    values = iter(range(100))

    def make(name):
        def measure():
            calls.append(name)
            return next(values)
        return measure

    out = interleaved({"x": make("x"), "y": make("y")}, rounds=2, warmup=1)
    assert calls == ["x", "y"] * 3 and out == {"x": [2.0, 4.0], "y": [3.0, 5.0]}
