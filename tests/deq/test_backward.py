"""The backward objects of deq_solve (Implicit / JFB / Phantom / None): their fields, their config form
(backward_from_config / backward_to_config; the names 'implicit', 'jfb', 'phantom', 'none' exist only there), and
the refusal of a string backward and of the removed backward keywords (b_*, phantom_*) with advice."""
import json
import warnings

import pytest
import torch

from lmdeq import DEQ, JFB, Anderson, Apriori, AuthorsAnderson, Broyden, FixedPoint, Implicit, Phantom, deq_solve
from lmdeq.deq import BACKWARD_MODES, as_backward, backward_from_config, backward_to_config
from lmdeq.errors import ConfigError, ConfigTypeError


def _problem(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    W = (0.5 * torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5).requires_grad_()
    x = torch.randn(3, n, generator=g, dtype=torch.float64, requires_grad=True)
    return W, x, (lambda z: torch.tanh(z @ W.T + x))


def _grads(**kwargs):
    W, x, f = _problem()
    seen = []
    z, _ = deq_solve(f, torch.zeros_like(x), solver=Anderson(max_iter=200, tol=1e-12), on_backward=seen.append,
                     **kwargs)
    gW, gx = torch.autograd.grad((z ** 2).sum(), (W, x))
    return gW, gx, seen


def test_config_names_are_the_default_objects():
    assert BACKWARD_MODES == ("implicit", "jfb", "phantom", "none")
    assert backward_from_config({"method": "implicit"}) == Implicit()
    assert backward_from_config({"method": "jfb"}) == JFB()
    assert backward_from_config({"method": "phantom"}) == Phantom()
    assert backward_from_config({"method": "none"}) is None and backward_from_config(None) is None
    assert as_backward(None) is None
    for obj in (Implicit(), JFB(), Phantom(steps=2)):
        assert as_backward(obj) is obj and backward_from_config(obj) is obj
    assert Implicit() == Implicit(solver=FixedPoint(max_iter=40, tol=1e-6, stop_mode="abs", exact=False), x0="v")
    assert Phantom() == Phantom(steps=5, tau=0.5)
    with pytest.raises(TypeError, match="backward must be"):
        as_backward(3)


@pytest.mark.parametrize("name", ["implicit", "jfb", "phantom", "none"])
def test_a_backward_name_is_refused_outside_configs(name):
    with pytest.raises(ConfigTypeError, match=rf"backward='{name}': pass the object, e.g. backward=lmdeq.Implicit\(\)"):
        as_backward(name)
    _, x, f = _problem()
    with pytest.raises(ConfigTypeError, match=r"pass the object, e.g. backward=lmdeq.Implicit\(\), lmdeq.JFB\(\), "
                                              r"lmdeq.Phantom\(\) or None"):
        deq_solve(f, torch.zeros_like(x), backward=name)
    with pytest.raises(ConfigTypeError, match=r"pass the object, e.g. backward=lmdeq.Implicit\(\)"):
        DEQ(lambda z, x: torch.tanh(0.5 * z + x), backward=name)


def test_fields_are_checked_and_normalised():
    b = Implicit(solver=FixedPoint(max_iter=torch.tensor(7), tol=1))
    assert (b.solver.max_iter, type(b.solver.max_iter), b.solver.tol, type(b.solver.tol)) == (7, int, 1.0, float)
    b = Implicit(solver=Anderson(m=3))
    assert b.solver.m == 3 and b.x0 == "v"
    with pytest.raises(ValueError, match="FixedPoint: stop_mode must be one of"):
        Implicit(solver=FixedPoint(stop_mode="max"))
    with pytest.raises(TypeError, match="Implicit: solver must be a Solver object"):
        Implicit(solver="fixed_point")
    with pytest.raises(TypeError, match="Implicit: solver must be a Solver object"):
        Implicit(solver={"name": "fixed_point"})
    with pytest.raises(ValueError, match="Implicit: x0 must be one of"):
        Implicit(x0="ones")
    with pytest.raises(TypeError):
        Implicit(max_iter=40)   # the adjoint's settings live in its solver object


def test_an_implicit_backward_with_its_own_solver_gives_the_converged_gradients():
    """(The part of the removed b_* shim test that still holds: an Implicit with a Broyden adjoint from 0.)"""
    broyden = _grads(backward=Implicit(solver=Broyden(max_iter=300, tol=1e-11), x0="zeros"))
    picard = _grads(backward=Implicit(solver=FixedPoint(max_iter=300, tol=1e-11)))
    assert len(broyden[2]) == 1 and bool(broyden[2][0]["converged"].all())
    assert torch.allclose(broyden[0], picard[0], rtol=1e-8, atol=1e-9)
    assert torch.allclose(broyden[1], picard[1], rtol=1e-8, atol=1e-9)


def test_phantom_steps_from_the_solved_state():
    W, x, f = _problem(1)
    solver = Anderson(max_iter=200, tol=1e-12)
    z, _ = deq_solve(f, torch.zeros_like(x), solver=solver, backward=Phantom(steps=3, tau=0.7))
    star, _ = deq_solve(f, torch.zeros_like(x), solver=solver, backward=None)
    expected = star
    for _ in range(3):
        expected = (1.0 - 0.7) * expected + 0.7 * f(expected)
    assert torch.equal(z, expected)
    assert torch.equal(torch.autograd.grad(z.sum(), W)[0], torch.autograd.grad(expected.sum(), W)[0])


@pytest.mark.parametrize("kwargs", [dict(b_solver="broyden", b_max_iter=300, b_tol=1e-11), dict(b_tol=1e-9)])
def test_removed_backward_keywords_are_errors_with_advice(kwargs):
    _, x, f = _problem()
    with pytest.raises(ConfigTypeError, match="are settings of the solver"):
        deq_solve(f, torch.zeros_like(x), **kwargs)
    with pytest.raises(ConfigTypeError, match="are settings of the solver"):
        deq_solve(f, torch.zeros_like(x), backward=Implicit(), **kwargs)
    with pytest.raises(ConfigTypeError, match=r"DEQ got unknown config key\(s\)"):
        DEQ(lambda z, x: torch.tanh(0.5 * z + x), **kwargs)


def test_removed_phantom_keywords_are_errors():
    _, x, f = _problem(1)
    with pytest.raises(ConfigTypeError, match=r"unexpected keyword argument\(s\) \['phantom_steps', 'phantom_tau'\]"):
        deq_solve(f, torch.zeros_like(x), backward=Phantom(), phantom_steps=3, phantom_tau=0.7)


def test_deq_module_checks_the_backward_once():
    layer = DEQ(lambda z, x: torch.tanh(0.5 * z + x), backward=Implicit(solver=FixedPoint(tol=1e-9)))
    assert layer.config == {"backward": Implicit(solver=FixedPoint(tol=1e-9))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, _ = layer(torch.zeros(2, 3), torch.ones(2, 3))   # no warning per call
    assert DEQ(lambda z, x: z, backward=JFB()).config == {"backward": JFB()}
    assert DEQ(lambda z, x: z).config == {"backward": Implicit()}
    assert DEQ(lambda z, x: z, backward=None).config == {"backward": None}


@pytest.mark.parametrize("backward", [
    Implicit(),
    Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True)),
    Implicit(solver=FixedPoint(max_iter=Apriori(slack=5), tol=1e-3, stop_mode="rel")),
    Implicit(solver=AuthorsAnderson(max_iter=20, tol=1e-3, stop_mode="rel", m=6, lam=1e-4), x0="zeros"),
    Implicit(solver=Broyden(max_iter=20, tol=1e-3, stop_mode="rel", memory=8), x0="zeros"),
    Implicit(solver=Anderson(max_iter=12, tol=1e-5, m=4, lam=1e-3, tau=0.8, check_every=2)),
    JFB(),
    Phantom(),
    Phantom(steps=3, tau=0.7),
    None,
])
def test_backward_config_round_trip(backward):
    config = backward_to_config(backward)
    assert json.loads(json.dumps(config)) == config
    assert backward_from_config(config) == backward
    assert backward_from_config(json.loads(json.dumps(config))) == backward
    if backward is not None:
        assert backward.to_config() == config


def test_backward_config_forms():
    assert backward_to_config(None) == {"method": "none"}
    assert backward_to_config(JFB()) == {"method": "jfb"}
    assert backward_to_config(Phantom(steps=3, tau=0.7)) == {"method": "phantom", "steps": 3, "tau": 0.7}
    assert backward_to_config(Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel"))) == {
        "method": "implicit", "x0": "v",
        "solver": {"name": "fixed_point", "max_iter": {"apriori": 2}, "tol": 1e-3, "stop_mode": "rel", "exact": False,
                   "check_every": None, "raise_on_failure": False, "tau": 1.0}}
    assert backward_from_config({"method": "implicit", "solver": {"name": "broyden", "max_iter": 20}, "x0": "zeros"}
                                ) == Implicit(solver=Broyden(max_iter=20), x0="zeros")


@pytest.mark.parametrize("config,error,match", [
    ({"method": "adjoint"}, ValueError, "backward: method must be one of"),
    ({}, ValueError, "backward: method must be one of"),
    ({"method": "none", "steps": 2}, ConfigTypeError, "backward 'none' takes no fields"),
    ({"method": "jfb", "steps": 2}, ConfigTypeError, r"backward 'jfb' has no field\(s\) \['steps'\]"),
    ({"method": "implicit", "max_iter": 40}, ConfigTypeError, r"backward 'implicit' has no field\(s\) \['max_iter'\]"),
    ({"method": "implicit", "solver": {"name": "picard"}}, ConfigError, "solver name must be one of"),
    ("implicit", ConfigTypeError, "a backward config must be a dict with a 'method'"),
])
def test_bad_backward_configs(config, error, match):
    with pytest.raises(error, match=match):
        backward_from_config(config)
