"""The backward objects of deq_solve (Implicit / JFB / Phantom / None), their string shorthands, the flat config
spelling (lmdeq.deq.flat), and the deprecated backward keywords (b_*, phantom_*): still working, with a
DeprecationWarning naming the object to pass, and giving the same gradients."""
import warnings

import pytest
import torch

from lmdeq import DEQ, JFB, Implicit, Phantom, deq_solve
from lmdeq.deq import as_backward
from lmdeq.deq.flat import BACKWARD_FIELDS, FORWARD_FIELDS, solve_arguments


def _problem(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    W = (0.5 * torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5).requires_grad_()
    x = torch.randn(3, n, generator=g, dtype=torch.float64, requires_grad=True)
    return W, x, (lambda z: torch.tanh(z @ W.T + x))


def _grads(**kwargs):
    W, x, f = _problem()
    seen = []
    z, _ = deq_solve(f, torch.zeros_like(x), solver="anderson", max_iter=200, tol=1e-12, on_backward=seen.append,
                     **kwargs)
    gW, gx = torch.autograd.grad((z ** 2).sum(), (W, x))
    return gW, gx, seen


def test_shorthands_are_the_default_objects():
    assert as_backward("implicit") == Implicit() and as_backward("jfb") == JFB()
    assert as_backward("phantom") == Phantom() and as_backward("none") is None and as_backward(None) is None
    assert Implicit() == Implicit(solver="fixed_point", max_iter=40, tol=1e-6, stop_mode="abs", iterations=None,
                                  solver_kwargs={}, x0="v")
    assert Phantom() == Phantom(steps=5, tau=0.5)
    with pytest.raises(TypeError, match="backward must be"):
        as_backward(3)


def test_fields_are_checked_and_normalised():
    b = Implicit(max_iter=torch.tensor(7), tol=1, solver_kwargs={"m": 3})
    assert (b.max_iter, type(b.max_iter), b.tol, type(b.tol)) == (7, int, 1.0, float)
    kwargs = {"m": 3}
    b = Implicit(solver_kwargs=kwargs)
    kwargs["m"] = 9
    assert b.solver_kwargs == {"m": 3}   # a copy
    assert b.solver_arguments() == dict(max_iter=40, tol=1e-6, stop_mode="abs", iterations=None, m=3)
    with pytest.raises(ValueError, match="Implicit: stop_mode must be one of"):
        Implicit(stop_mode="max")
    with pytest.raises(TypeError, match="Implicit: solver_kwargs must be a dict"):
        Implicit(solver_kwargs=[("m", 3)])


def test_deprecated_keywords_warn_and_give_the_same_gradients():
    new = _grads(backward=Implicit(solver="broyden", max_iter=300, tol=1e-11, x0="zeros"))
    with pytest.warns(DeprecationWarning, match=r"b_max_iter, b_solver, b_tol, b_x0 are deprecated; pass "
                      r"backward=Implicit\(solver='broyden', max_iter=300, tol=1e-11, x0='zeros'\)"):
        old = _grads(b_solver="broyden", b_max_iter=300, b_tol=1e-11, b_x0="zeros")
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    assert new[2][0]["f_evals"] == old[2][0]["f_evals"]


def test_deprecated_phantom_keywords():
    W, x, f = _problem(1)
    z_new, _ = deq_solve(f, torch.zeros_like(x), backward=Phantom(steps=3, tau=0.7))
    with pytest.warns(DeprecationWarning, match=r"pass backward=Phantom\(steps=3, tau=0.7\)"):
        z_old, _ = deq_solve(f, torch.zeros_like(x), backward="phantom", phantom_steps=3, phantom_tau=0.7)
    assert torch.equal(z_new, z_old)
    assert torch.equal(torch.autograd.grad(z_new.sum(), W)[0], torch.autograd.grad(z_old.sum(), W)[0])


def test_deprecated_keywords_of_another_method_are_ignored_as_before():
    _, x, f = _problem(2)
    z_jfb, _ = deq_solve(f, torch.zeros_like(x), backward="jfb")
    with pytest.warns(DeprecationWarning):
        z, _ = deq_solve(f, torch.zeros_like(x), backward="jfb", b_tol=1e-9, phantom_steps=2)
    assert torch.equal(z, z_jfb)


def test_deprecated_keywords_do_not_mix_with_an_object():
    _, x, f = _problem()
    with pytest.raises(TypeError, match="cannot be combined with backward=Implicit"):
        deq_solve(f, torch.zeros_like(x), backward=Implicit(), b_tol=1e-9)


def test_deq_module_turns_deprecated_keywords_into_the_object_once():
    with pytest.warns(DeprecationWarning, match="DEQ: the keywords b_tol are deprecated"):
        layer = DEQ(lambda z, x: torch.tanh(0.5 * z + x), b_tol=1e-9)
    assert layer.config == {"backward": Implicit(tol=1e-9)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, _ = layer(torch.zeros(2, 3), torch.ones(2, 3))   # no warning per call
    assert DEQ(lambda z, x: z, backward="jfb").config == {"backward": JFB()}


def test_flat_config_spelling():
    assert FORWARD_FIELDS == ("solver", "max_iter", "tol", "stop_mode", "iterations", "solver_kwargs")
    assert BACKWARD_FIELDS == ("solver", "max_iter", "tol", "stop_mode", "iterations", "solver_kwargs", "x0")
    cfg = dict(f_solver="anderson", f_max_iter=12, f_tol=1e-4, f_stop_mode="rel", f_solver_kwargs={"m": 4},
               backward="implicit", b_solver="broyden", b_max_iter=20, b_tol=1e-5, b_stop_mode="abs",
               b_solver_kwargs={"memory": 8}, b_x0="zeros", s=0.4)   # (s: not a solve setting, left out)
    kwargs = solve_arguments(cfg)
    assert kwargs == dict(solver="anderson", max_iter=12, tol=1e-4, stop_mode="rel", solver_kwargs={"m": 4},
                          backward=Implicit(solver="broyden", max_iter=20, tol=1e-5, stop_mode="abs",
                                            solver_kwargs={"memory": 8}, x0="zeros"))
    assert kwargs["solver_kwargs"] is not cfg["f_solver_kwargs"]
    assert solve_arguments(dict(cfg, backward="phantom"))["backward"] == Phantom()
    assert solve_arguments(dict(cfg, backward="none"))["backward"] is None
