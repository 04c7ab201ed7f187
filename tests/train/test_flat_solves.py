"""The flat spelling of a model's solves on the command line (lmdeq.app.flat_solves): each flat key edits the
forward / backward sections as documented, and a wrong key or value is a clear error naming it."""
import pytest

from lmdeq.app.flat_solves import FLAT_KEYS, apply_flat, model_arguments, split_flat
from lmdeq.deq import JFB, Implicit, Phantom
from lmdeq.errors import ConfigError, ConfigTypeError
from lmdeq.models import APRIORI_SOLVES, AUTHORS_SOLVER, mdeq, resolve_config
from lmdeq.solvers import Anderson, Apriori, AuthorsAnderson, FixedPoint

LIP = resolve_config("cifar10-small")
ORIG = resolve_config("cifar10-small", lipschitz=False)


def _apply(cfg, **flat):
    return apply_flat(cfg["forward"], cfg["backward"], flat)


def test_max_iter_tol_stop_mode_exact_of_each_side():
    fwd, bwd = _apply(LIP, f_max_iter=7, f_tol=1e-4, f_stop_mode="abs", b_max_iter=9, b_exact=True)
    assert fwd == FixedPoint(max_iter=7, tol=1e-4, stop_mode="abs")
    assert bwd == Implicit(solver=FixedPoint(max_iter=9, tol=1e-3, stop_mode="rel", exact=True))


def test_none_max_iter_is_the_certified_count():
    fwd, bwd = _apply(ORIG, f_max_iter=None)
    assert fwd.max_iter == Apriori() and bwd.solver.max_iter == 20


def test_a_solver_by_name_keeps_the_shared_fields_and_resets_its_own():
    fwd, bwd = _apply(ORIG, f_solver="anderson", f_solver_kwargs={"m": 3}, b_solver="fixed_point")
    assert fwd == Anderson(max_iter=18, tol=1e-3, stop_mode="rel", m=3)
    assert bwd == Implicit(solver=FixedPoint(max_iter=20, tol=1e-3, stop_mode="rel"), x0="zeros")


def test_solve_mode_apriori_and_checked():
    fwd, bwd = _apply(LIP, solve_mode="apriori")
    assert (fwd, bwd) == (APRIORI_SOLVES["forward"], APRIORI_SOLVES["backward"])
    fwd, bwd = apply_flat(fwd, bwd, {"solve_mode": "checked"})
    assert not fwd.exact and not bwd.solver.exact and fwd.max_iter == Apriori()


def test_backward_methods_and_the_adjoint_start():
    assert _apply(LIP, backward="jfb")[1] == JFB()
    assert _apply(LIP, backward="phantom")[1] == Phantom()
    assert _apply(LIP, backward="none")[1] is None
    assert _apply(LIP, backward="implicit", b_x0="zeros")[1].x0 == "zeros"


def test_a_backward_object_or_section_is_not_a_flat_key():
    flat, rest = split_flat({"backward": AUTHORS_SOLVER["backward"], "b_tol": 1e-4, "dropout": 0.1})
    assert flat == {"b_tol": 1e-4} and set(rest) == {"backward", "dropout"}
    assert set(FLAT_KEYS) >= {"f_max_iter", "b_x0", "solve_mode", "backward"}


def test_model_arguments_build_the_model_lmdeq_train_builds():
    kwargs = model_arguments("cifar10-small", True, {"f_max_iter": 5, "dropout": 0.1, "constraint": "certified"})
    model = mdeq("cifar10-small", **kwargs)
    assert model.config["forward"]["max_iter"] == 5 and model.config["dropout"] == 0.1
    assert model_arguments("cifar10-small", True, {"dropout": 0.1}) == {"dropout": 0.1}
    authors = model_arguments("cifar10-small", True, {**AUTHORS_SOLVER, "b_max_iter": 12})
    assert authors["backward"].solver == AuthorsAnderson(max_iter=12, tol=1e-3, stop_mode="rel", m=6, lam=1e-4)
    assert authors["forward"] == AUTHORS_SOLVER["forward"]


@pytest.mark.parametrize("flat,exc,match", [
    (dict(f_max_iter=0), ConfigError, "f_max_iter must be >= 1"),
    (dict(b_max_iter=-3), ConfigError, "b_max_iter must be >= 1"),
    (dict(f_solver="newton"), ConfigError, "f_solver must be one of"),
    (dict(backward="exact"), ConfigError, "backward must be one of"),
    (dict(solve_mode="fast"), ConfigError, "solve_mode must be 'apriori' or 'checked'"),
    (dict(f_solver_kwargs={"memory": 3}), ConfigTypeError, "f_solver_kwargs: FixedPoint has no field"),
    (dict(f_solver_kwargs=[1]), ConfigTypeError, "f_solver_kwargs must be a dict"),
    (dict(backward="jfb", b_tol=1e-4), ConfigError, "set the implicit backward's adjoint solve"),
    (dict(f_tol=-1.0), ConfigError, "tol"),
])
def test_bad_flat_keys_are_errors_naming_them(flat, exc, match):
    with pytest.raises(exc, match=match):
        _apply(LIP, **flat)
