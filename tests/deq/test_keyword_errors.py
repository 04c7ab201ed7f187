"""A keyword deq_solve does not take is a TypeError that says what to do: a solver's setting goes in the
solver object, a near miss names deq_solve's argument; a string solver is refused with what to pass."""
import pytest
import torch

from lmdeq import DEQ, Anderson, FixedPoint, deq_solve
from lmdeq.errors import ConfigTypeError


def _f(z):
    return 0.5 * z


@pytest.mark.parametrize("kwargs,advice", [
    ({"raise_on_failure": True}, r"\['raise_on_failure'\] are settings of the solver; solver must be a Solver object"),
    ({"check_every": 2, "m": 3}, r"\['check_every', 'm'\] are settings of the solver"),
    ({"max_iter": 3}, r"\['max_iter'\] are settings of the solver; solver must be a Solver object, e.g. "
                      r"solver=lmdeq.solvers.Anderson\(max_iter=30, tol=1e-3\)"),
    ({"tol": 1e-6, "stop_mode": "rel", "iterations": 5, "solver_kwargs": {"m": 3}},
     r"\['iterations', 'solver_kwargs', 'stop_mode', 'tol'\] are settings of the solver"),
    ({"backwards": None}, r"'backwards' \(did you mean 'backward'\?\)"),
    ({"bogus": 1}, r"deq_solve takes \['solver', 'backward'"),
])
def test_unknown_keywords_come_with_advice(kwargs, advice):
    with pytest.raises(ConfigTypeError, match=advice):
        deq_solve(_f, torch.zeros(2, 3), **kwargs)


def test_the_advice_works():
    z, info = deq_solve(_f, torch.ones(2, 3), solver=FixedPoint(raise_on_failure=True))
    assert info.result == "converged"


@pytest.mark.parametrize("solver", ["anderson", "fixed_point", Anderson, {"name": "anderson"}])
def test_a_solver_that_is_not_an_object_is_refused(solver):
    advice = r"solver must be a Solver object, e.g. solver=lmdeq.solvers.Anderson\(max_iter=30, tol=1e-3\)"
    with pytest.raises(ConfigTypeError, match="deq_solve: " + advice):
        deq_solve(_f, torch.zeros(2, 3), solver=solver)
    with pytest.raises(ConfigTypeError, match="DEQ: " + advice):
        DEQ(lambda z, x: 0.5 * z + x, solver=solver)


def test_deq_module_names_solver_settings():
    with pytest.raises(ConfigTypeError, match=r"DEQ got unknown config key\(s\) \['max_iter'\].*solver must be a "
                                              r"Solver object"):
        DEQ(lambda z, x: 0.5 * z + x, max_iter=3)
