"""A-priori counts with hysteresis (lmdeq.solvers.SettledCounts): never below what the certified
bound needs, raised at once, lowered only after the need dropped by `slack` (so CUDA graphs keyed by the counts
are recaptured rarely)."""
import random

import pytest
import torch

from lmdeq.models import APRIORI_SOLVES, mdeq
from lmdeq.solvers import Apriori, SettledCounts, apriori_iterations

from .tiny import TINY2


def test_counts_rise_at_once_and_fall_only_past_the_slack():
    s = SettledCounts()
    assert [s.settle("f", n, slack=2) for n in (5, 6, 5, 6, 4, 5, 4, 3, 9)] == [5, 6, 6, 6, 4, 5, 5, 3, 9]
    assert s.changes == 5   # 5->6, 6->4, 4->5, 5->3, 3->9
    assert s.settle("b", 2) == 2 and s.current == {"f": 9, "b": 2}
    # the default slack is 2: the same sequence settles the same way
    d = SettledCounts()
    assert [d.settle("f", n) for n in (5, 6, 5, 6, 4, 5, 4, 3, 9)] == [5, 6, 6, 6, 4, 5, 5, 3, 9]
    assert d.changes == 5


def test_a_bound_hovering_at_a_threshold_changes_the_count_rarely():
    rng = random.Random(0)
    s = SettledCounts()
    # L drifts up across the 6 -> 7 threshold, jittering there (the need flips between 6 and 7), then drifts
    # down to a need of 5
    needs = [6] * 20 + [rng.choice((6, 7)) for _ in range(400)] + [7] * 20 + [rng.choice((6, 7)) for _ in range(50)]
    needs += [rng.choice((5, 6)) for _ in range(50)]
    held = [s.settle("f", n, slack=2) for n in needs]
    assert all(h >= n for h, n in zip(held, needs))
    flips = sum(a != b for a, b in zip(needs, needs[1:]))
    # 6 -> 7 once; on the way down 7 -> 5 at the first need of 5, then 5 -> 6 at the next 6, held there
    assert flips > 200 and s.changes == 3 and held[-1] == 6, (flips, s.changes, held[-1])


@pytest.mark.parametrize("slack", [0, -1, 1.5, True, "2"])
def test_bad_slack_is_named(slack):
    # the slack of an a-priori count is a setting of its Apriori() max_iter, checked there
    with pytest.raises(ValueError, match="Apriori: slack"):
        Apriori(slack=slack)


def _bound_with_count(count, tol):
    for i in range(1, 1000):
        L = i / 1000
        if apriori_iterations(L, tol, 1.0) == count:
            return L
    raise AssertionError(f"no L with count {count}")


def test_model_runs_the_settled_counts():
    torch.manual_seed(0)
    model = mdeq("cifar10-small", **TINY2, **APRIORI_SOLVES).eval()
    tol = model.config["forward"]["tol"]
    c = 5
    bounds = {n: _bound_with_count(n, tol) for n in (c - 1, c, c + 1)}
    x = torch.randn(2, 3, 32, 32)
    steps, held = [], []
    for n in (c, c + 1, c, c - 1):      # held at c+1 while the need is c, lowered when it is c+1-2
        model.lipschitz_bound = lambda L=bounds[n]: L
        with torch.no_grad():
            model(x)
        steps.append(model.last_info["f_nstep"])
        held.append(model.deq.solves.settled.current["forward"])
    assert held == [c, c + 1, c + 1, c - 1]
    assert steps[1] == steps[0] + 1 and steps[2] == steps[1] and steps[3] == steps[0] - 1, steps
