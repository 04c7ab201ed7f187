"""A keyword deq_solve does not take is a TypeError that says what to do: a solver's own option goes in
solver_kwargs, a near miss names deq_solve's argument."""
import pytest
import torch

from lmdeq import deq_solve


def _f(z):
    return 0.5 * z


@pytest.mark.parametrize("kwargs,advice", [
    ({"raise_on_failure": True}, r"options of the solver, pass them as solver_kwargs=\{'raise_on_failure': \.\.\.\}"),
    ({"check_every": 2, "m": 3}, r"\['check_every', 'm'\] are options of the solver"),
    ({"max_iters": 3}, r"'max_iters' \(did you mean 'max_iter'\?\)"),
    ({"bogus": 1}, r"deq_solve takes \['solver', 'max_iter'"),
])
def test_unknown_keywords_come_with_advice(kwargs, advice):
    with pytest.raises(TypeError, match=advice):
        deq_solve(_f, torch.zeros(2, 3), **kwargs)


def test_the_advice_works():
    z, info = deq_solve(_f, torch.ones(2, 3), solver="fixed_point", solver_kwargs={"raise_on_failure": True})
    assert info.result == "converged"
