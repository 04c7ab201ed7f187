"""The model config holds its solves as deq_solve's objects (the sections ``forward`` and ``backward``) end to
end: the solve arguments are the config's own values (the adjoint's stop mode included, not forced to the
forward's); the flat f_<arg> / b_<arg> keys, solve_mode and the older key names are gone (an unknown override),
as are the deprecated module paths."""
import importlib
import warnings

import pytest
import torch

import lmdeq.models.certified as certified   # (the module whose deq_solve the model calls: CertifiedDEQ)
import lmdeq.models.classifier as classifier
from lmdeq import Anderson, Apriori, Broyden, FixedPoint, Implicit
from lmdeq.errors import ConfigTypeError
from lmdeq.models import APRIORI_SOLVES, mdeq, resolve_config
from lmdeq.solvers import adjoint_apriori_iterations, apriori_iterations

from .tiny import TINY2


def _solve_kwargs(monkeypatch, model):
    """The keyword arguments the model passes to deq_solve in one forward pass."""
    seen = {}
    real = certified.deq_solve

    def spy(f, z0, **kwargs):
        seen.update(kwargs)
        return real(f, z0, **kwargs)

    monkeypatch.setattr(certified, "deq_solve", spy)
    model(torch.randn(2, 3, 32, 32))
    return seen


def test_the_solve_arguments_are_the_configs_values(monkeypatch):
    forward = Anderson(max_iter=5, tol=1e-4, stop_mode="abs", m=3)
    backward = Implicit(solver=FixedPoint(max_iter=7, tol=1e-5, stop_mode="rel", tau=0.9), x0="v")
    model = mdeq("cifar10-small", lipschitz=False, **TINY2, forward=forward, backward=backward)
    kw = _solve_kwargs(monkeypatch, model.train())
    assert kw["solver"] == forward and kw["backward"] == backward
    assert (kw["solver"].max_iter, kw["solver"].tol, kw["solver"].stop_mode, kw["solver"].m) == (5, 1e-4, "abs", 3)
    assert model.config["forward"] == forward.to_config() and model.config["backward"] == backward.to_config()


def test_apriori_counts_fill_the_solvers(monkeypatch):
    model = mdeq("cifar10-small", **TINY2, init_power_iters=2, **APRIORI_SOLVES)
    kw = _solve_kwargs(monkeypatch, model.train())
    L = model.lipschitz_bound()
    n, m = apriori_iterations(L, 1e-3), adjoint_apriori_iterations(L, 1e-3)
    assert (kw["solver"].max_iter, kw["solver"].exact) == (n, True)
    assert (kw["backward"].solver.max_iter, kw["backward"].solver.exact) == (m, True)
    assert kw["solver"] == FixedPoint(max_iter=n, tol=1e-3, stop_mode="rel", exact=True)
    assert kw["backward"] == Implicit(solver=FixedPoint(max_iter=m, tol=1e-3, stop_mode="rel", exact=True), x0="v")
    assert model.last_info["lipschitz_bound"] == L


def test_the_adjoint_stop_mode_is_its_own():
    cfg = resolve_config("cifar10-small", lipschitz=False, forward=Broyden(max_iter=18, tol=1e-3, stop_mode="abs"),
                         backward=Implicit(solver=Broyden(max_iter=20, tol=1e-3, stop_mode="rel"), x0="zeros"))
    assert (cfg["forward"]["stop_mode"], cfg["backward"]["solver"]["stop_mode"]) == ("abs", "rel")
    with pytest.raises(ValueError, match="set the backward solver's stop_mode='rel'"):
        resolve_config("cifar10-small", forward=FixedPoint(max_iter=10, tol=1e-3, stop_mode="rel"),
                       backward=Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="abs")))


@pytest.mark.parametrize("key,value", [
    ("f_solver", "anderson"), ("f_max_iter", 7), ("f_tol", 1e-4), ("f_stop_mode", "abs"), ("f_solver_kwargs", {}),
    ("f_iterations", 5), ("b_solver", "broyden"), ("b_max_iter", 7), ("b_tol", 1e-4), ("b_stop_mode", "rel"),
    ("b_solver_kwargs", {}), ("b_x0", "v"), ("solve_mode", "apriori"), ("solver", "anderson"),
    ("solver_kwargs", {"m": 3}), ("stop_mode", "abs"),
])
def test_the_flat_and_older_keys_are_unknown_overrides(key, value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # refused, not translated with a DeprecationWarning
        with pytest.raises(ConfigTypeError, match=rf"unknown mdeq override\(s\) \['{key}'\]; valid keys: .*'backward'"):
            resolve_config("cifar10-small", lipschitz=False, **{key: value})


def test_a_config_saved_with_the_flat_names_is_refused():
    torch.manual_seed(0)
    model = mdeq("cifar10-small", lipschitz=False, **TINY2).eval()
    old = {k: v for k, v in model.config.items() if k not in ("forward", "backward")}
    old.update(f_solver="broyden", f_max_iter=4, b_max_iter=4, f_stop_mode="rel", b_stop_mode="rel")
    with pytest.raises(ConfigTypeError, match="unknown mdeq override"):
        mdeq(**old)


@pytest.mark.parametrize("module,names,home", [
    ("lmdeq.models.apriori", ("apriori_iterations", "adjoint_apriori_iterations"), "lmdeq.solvers"),
    ("lmdeq.ops.fixed_point_step", ("fixed_point_update", "fixed_point_update_multi"), "lmdeq.ops"),
    ("lmdeq.models.solve_setup", ("SettledCounts",), "lmdeq.solvers"),
    ("lmdeq.deq.flat", (), None),
])
def test_moved_names_live_only_in_their_homes(module, names, home):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)
    if home is not None:
        assert all(callable(getattr(importlib.import_module(home), n)) for n in names)


def test_the_factory_lives_with_the_model():
    import lmdeq.models.presets as presets

    assert mdeq is classifier.mdeq
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from lmdeq.models import mdeq as again   # the documented path does not warn
    assert again is mdeq
    assert not hasattr(presets, "mdeq")
    with pytest.raises(AttributeError):
        presets.no_such_name
