"""The model config speaks deq_solve's flat naming (f_<arg> / b_<arg>, lmdeq.deq.flat) end to end: the solve
arguments are the config's own values (b_stop_mode included, no longer forced to the forward's), older key
names and moved import paths still work with a DeprecationWarning."""
import importlib
import sys
import warnings

import pytest
import torch

import lmdeq.models.classifier as classifier
from lmdeq import Implicit
from lmdeq.models import mdeq, resolve_config

from .tiny import TINY2


def _solve_kwargs(monkeypatch, model):
    """The keyword arguments the model passes to deq_solve in one forward pass."""
    seen = {}
    real = classifier.deq_solve

    def spy(f, z0, **kwargs):
        seen.update(kwargs)
        return real(f, z0, **kwargs)

    monkeypatch.setattr(classifier, "deq_solve", spy)
    model(torch.randn(2, 3, 32, 32))
    return seen


def test_the_solve_arguments_are_the_configs_values(monkeypatch):
    model = mdeq("cifar10-small", lipschitz=False, **TINY2, f_solver="anderson", f_max_iter=5, f_tol=1e-4,
                 f_stop_mode="abs", f_solver_kwargs={"m": 3}, b_solver="fixed_point", b_max_iter=7, b_tol=1e-5,
                 b_stop_mode="rel", b_solver_kwargs={"tau": 0.9}, b_x0="v")
    kw = _solve_kwargs(monkeypatch, model.train())
    assert {k: kw[k] for k in ("solver", "max_iter", "tol", "stop_mode", "solver_kwargs")} == dict(
        solver="anderson", max_iter=5, tol=1e-4, stop_mode="abs", solver_kwargs={"m": 3})
    assert kw["backward"] == Implicit(solver="fixed_point", max_iter=7, tol=1e-5, stop_mode="rel",
                                      solver_kwargs={"tau": 0.9}, x0="v")


def test_apriori_counts_fill_the_flat_keys(monkeypatch):
    model = mdeq("cifar10-small", **TINY2, init_power_iters=2, solve_mode="apriori")
    kw = _solve_kwargs(monkeypatch, model.train())
    L = model.lipschitz_bound()
    from lmdeq.solvers import adjoint_apriori_iterations, apriori_iterations

    n, m = apriori_iterations(L, 1e-3), adjoint_apriori_iterations(L, 1e-3)
    assert (kw["iterations"], kw["max_iter"]) == (n, n)
    assert (kw["backward"].iterations, kw["backward"].max_iter) == (m, m)
    assert model.last_info["lipschitz_bound"] == L


def test_the_adjoint_stop_mode_is_its_own():
    cfg = resolve_config("cifar10-small", lipschitz=False, f_stop_mode="abs", b_stop_mode="rel")
    assert (cfg["f_stop_mode"], cfg["b_stop_mode"]) == ("abs", "rel")
    with pytest.raises(ValueError, match="set b_stop_mode=rel"):
        resolve_config("cifar10-small", f_max_iter=10, b_stop_mode="abs")   # b_max_iter=None: a-priori count


def test_older_key_names_warn_and_mean_what_they_meant():
    with pytest.warns(DeprecationWarning, match="'stop_mode' is deprecated; use 'f_stop_mode' and 'b_stop_mode'"):
        cfg = resolve_config("cifar10-small", lipschitz=False, stop_mode="abs")
    assert (cfg["f_stop_mode"], cfg["b_stop_mode"]) == ("abs", "abs") and "stop_mode" not in cfg
    with pytest.warns(DeprecationWarning) as caught:
        cfg = resolve_config("cifar10-small", lipschitz=False, solver="anderson", solver_kwargs={"m": 3})
    assert sorted(str(w.message) for w in caught) == [
        "mdeq: the config key 'solver' is deprecated; use 'f_solver'",
        "mdeq: the config key 'solver_kwargs' is deprecated; use 'f_solver_kwargs'"]
    assert all(w.filename == __file__ for w in caught)   # attributed to the caller, not to lmdeq
    assert (cfg["f_solver"], cfg["f_solver_kwargs"]) == ("anderson", {"m": 3})
    with pytest.raises(TypeError, match="'solver' is the deprecated spelling of"):
        resolve_config("cifar10-small", solver="anderson", f_solver="anderson")


def test_a_config_saved_with_the_older_names_rebuilds_the_same_model():
    torch.manual_seed(0)
    model = mdeq("cifar10-small", lipschitz=False, **TINY2, f_max_iter=4, b_max_iter=4).eval()
    old = {k: v for k, v in model.config.items() if k not in ("f_solver", "f_solver_kwargs", "f_stop_mode",
                                                                "b_stop_mode")}
    old.update(solver=model.config["f_solver"], solver_kwargs=model.config["f_solver_kwargs"],
               stop_mode=model.config["f_stop_mode"])
    with pytest.warns(DeprecationWarning):
        clone = mdeq(**old).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


@pytest.mark.parametrize("module,names,new", [
    ("lmdeq.models.apriori", ("apriori_iterations", "adjoint_apriori_iterations"), "lmdeq.solvers"),
    ("lmdeq.ops.fixed_point_step", ("fixed_point_update", "fixed_point_update_multi"), "lmdeq.ops"),
])
def test_moved_modules_warn_and_give_the_same_objects(module, names, new):
    sys.modules.pop(module, None)
    with pytest.warns(DeprecationWarning, match=f"{module} is deprecated"):
        old = importlib.import_module(module)
    home = importlib.import_module(new)
    assert all(getattr(old, n) is getattr(home, n) for n in names)


def test_the_factory_lives_with_the_model():
    import lmdeq.models.presets as presets

    assert mdeq is classifier.mdeq
    with pytest.warns(DeprecationWarning, match="lmdeq.models.presets.mdeq is deprecated"):
        assert presets.mdeq is mdeq
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from lmdeq.models import mdeq as again   # the documented path does not warn
    assert again is mdeq
    with pytest.raises(AttributeError):
        presets.no_such_name
