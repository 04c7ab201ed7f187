"""Presets, parameter counts, config round trip, and clear errors for bad configs."""
import json

import pytest
import torch

from lmdeq import Anderson, Apriori, Broyden, FixedPoint, Implicit
from lmdeq.models import APRIORI_SOLVES, AUTHORS_SOLVER, PRESETS, mdeq

from .tiny import TINY2, original_solves


@pytest.mark.parametrize("preset,expected", [("cifar10-small", 159e3), ("cifar10-large", 11.1e6)])
@pytest.mark.parametrize("lipschitz", [False, True])
def test_preset_parameter_counts(preset, expected, lipschitz):
    kw = {"init_power_iters": 1} if lipschitz else {}
    model = mdeq(preset, lipschitz=lipschitz, **kw)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.01, count


def test_presets_are_named():
    assert set(PRESETS) == {"cifar10-large", "cifar10-small", "cifar100-large", "cifar100-small", "svhn-small",
                            "mnist-small", "fashion-mnist-small", "tiny-imagenet-small", "imagenet-small",
                            "imagenet-large"}


@pytest.mark.parametrize("lipschitz", [False, True])
def test_config_round_trip_rebuilds_the_same_model(lipschitz):
    torch.manual_seed(0)
    extra = {} if lipschitz else original_solves(4, 4)   # keep Broyden short on CPU
    model = mdeq("cifar10-small", lipschitz=lipschitz, **TINY2, **extra).eval()
    config = json.loads(json.dumps(model.config))       # JSON-serialisable
    assert config["preset"] == "cifar10-small" and config["lipschitz"] is lipschitz
    clone = mdeq(**config).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(clone(x), model(x), rtol=1e-5, atol=1e-6)
    if lipschitz:
        assert clone.lipschitz_bound() == pytest.approx(model.lipschitz_bound(), rel=1e-5)


def test_variant_defaults():
    orig = mdeq("cifar10-large", lipschitz=False).config
    f, b = orig["forward"], orig["backward"]
    assert (f["name"], b["solver"]["name"], f["max_iter"], b["solver"]["max_iter"]) == ("broyden", "broyden", 18, 20)
    assert (f["tol"], f["stop_mode"], b["solver"]["stop_mode"]) == (1e-3, "rel", "rel")
    assert b["method"] == "implicit" and b["solver"]["tol"] == 1e-3 and not f["exact"] and not b["solver"]["exact"]
    assert f == Broyden(max_iter=18, tol=1e-3, stop_mode="rel").to_config()
    assert b == Implicit(solver=Broyden(max_iter=20, tol=1e-3, stop_mode="rel"), x0="zeros").to_config()
    small = mdeq("cifar10-small", lipschitz=False).config
    assert (small["forward"]["max_iter"], small["backward"]["solver"]["max_iter"], small["dropout"]) == (
        18, 20, 0.25)   # cls_mdeq_TINY.yaml
    assert (b["x0"], small["backward"]["x0"], orig["unrolled_warmup_steps"]) == ("zeros", "zeros", 0)
    lip = mdeq("cifar10-small", init_power_iters=1).config
    assert {k: lip[k] for k in ("s", "gamma_max", "alpha", "beta", "conv_cap")} == dict(
        s=0.4, gamma_max=1.0, alpha=0.5, beta=0.3, conv_cap=2.0)
    # the Lipschitz default: Picard to rel tol 1e-3, capped at the a-priori count, checked (not exact)
    assert lip["forward"] == FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel").to_config()
    assert lip["backward"] == Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel")).to_config()
    assert lip["forward"]["max_iter"] == {"apriori": 2} and lip["forward"]["exact"] is False
    authors = mdeq("cifar10-small", init_power_iters=1, **AUTHORS_SOLVER).config
    af, ab = authors["forward"], authors["backward"]["solver"]
    assert (af["name"], (af["m"], af["lam"]), af["max_iter"], ab["max_iter"]) == (
        "authors_anderson", (6, 1e-4), 18, 20)
    assert (ab["name"], (ab["m"], ab["lam"]), af["tol"], ab["tol"], af["stop_mode"], ab["stop_mode"]) == (
        "authors_anderson", (6, 1e-4), 1e-3, 1e-3, "rel", "rel")
    assert (authors["backward"]["x0"], lip["backward"]["x0"]) == ("zeros", "v")
    apriori = mdeq("cifar10-small", init_power_iters=1, **APRIORI_SOLVES).config
    assert apriori["forward"] == FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True).to_config()
    assert apriori["backward"]["solver"] == apriori["forward"] and apriori["backward"]["x0"] == "v"


@pytest.mark.parametrize("overrides,exc,match", [
    (dict(s=0.0), ValueError, "s must be"),
    (dict(s=-1.0), ValueError, "s must be"),
    (dict(alpha=1.5), ValueError, "alpha"),
    (dict(alpha=-0.1), ValueError, "alpha"),
    (dict(beta=-0.01), ValueError, "beta"),
    (dict(beta=2.0), ValueError, "beta"),
    (dict(conv_cap=0.0), ValueError, "conv_cap"),
    (dict(conv_cap=-2.0), ValueError, "conv_cap"),
    (dict(gamma_max=0.0), ValueError, "gamma_max"),
    (dict(sigma_margin=-0.1), ValueError, "sigma_margin"),
    (dict(s=float("nan")), ValueError, "s must be"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(channels=[8, 12]), ValueError, "divisible"),
    (dict(channels=[8]), ValueError, "branches"),
    (dict(head_channels=[2]), ValueError, "head_channels"),
    (dict(power_iters=0), ValueError, "power_iters"),
    (dict(forward={"name": "newton"}), ValueError, "solver name must be one of"),
    (dict(forward={"name": "fixed_point", "stop_mode": "max"}), ValueError, "FixedPoint: stop_mode"),
    (dict(backward={"method": "implicit", "solver": {"name": "fixed_point", "stop_mode": "max"}}), ValueError,
     "FixedPoint: stop_mode"),
    (dict(forward={"name": "fixed_point", "max_iter": {"fast": 2}}), ValueError,
     r"max_iter must be an int or \{'apriori': slack\}"),
    (dict(forward=Anderson(max_iter=Apriori(), tol=1e-3, stop_mode="rel", exact=True)), ValueError,
     "must be a FixedPoint solver"),
    (dict(forward=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="abs")), ValueError,
     "stop_mode='rel'.*set the forward's stop_mode='rel'"),
    (dict(backward=Implicit(solver=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="abs"))), ValueError,
     "stop_mode='rel'.*set the backward solver's stop_mode='rel'"),
    (dict(forward={"name": "fixed_point", "max_iter": -1}), ValueError, "max_iter"),
    (dict(forward={"name": "fixed_point", "max_iter": 0}), ValueError, "forward's max_iter must be >= 1"),
    (dict(backward=Implicit(solver=FixedPoint(max_iter=0))), ValueError, "backward solver's max_iter must be >= 1"),
    (dict(backward="exact"), ValueError, "backward"),
    (dict(backward={"method": "exact"}), ValueError, "backward: method must be one of"),
    (dict(forward="fixed_point"), ValueError, "a solver config must be a dict"),
    (dict(f_max_iter=10), TypeError, "unknown mdeq override"),
    (dict(solve_mode="apriori"), TypeError, "unknown mdeq override"),
    (dict(weight_norm="yes"), TypeError, "weight_norm"),
    (dict(alpah=0.5), TypeError, "unknown mdeq override"),
])
def test_bad_hyperparameters_are_clear_errors(overrides, exc, match):
    with pytest.raises(exc, match=match):
        mdeq("cifar10-small", lipschitz=True, **overrides)


def test_bad_preset_and_variant_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        mdeq("cifar100-huge")
    with pytest.raises(TypeError, match="lipschitz must be a bool"):
        mdeq("cifar10-small", lipschitz="yes")
    with pytest.raises(ValueError, match="only apply to the Lipschitz variant"):
        mdeq("cifar10-small", lipschitz=False, s=0.4)
    with pytest.raises(ValueError, match="a-priori"):
        mdeq("cifar10-small", lipschitz=False, forward=FixedPoint(max_iter=Apriori(), tol=1e-3, stop_mode="rel"))
    with pytest.raises(ValueError, match="certifies no bound, so there is no a-priori iteration count"):
        mdeq("cifar10-small", lipschitz=False, **APRIORI_SOLVES)


def test_jacobian_regularisation_keys_default_off_and_are_checked():
    from lmdeq.errors import ConfigError
    from lmdeq.models import RELEASED_JR
    from lmdeq.models.presets import jacobian_regularised

    cfg = mdeq("cifar10-small", lipschitz=False, **TINY2).config
    assert not jacobian_regularised(cfg) and cfg["rand_f_thres_delta"] == 0 and cfg["jac_loss_vecs"] == 2
    assert jacobian_regularised(mdeq("cifar10-small", lipschitz=False, **TINY2, **RELEASED_JR).config)
    for key, value, err in [("jac_loss_weight", -0.1, ValueError), ("jac_loss_freq", 1.5, ValueError),
                            ("jac_incremental", 0, ValueError), ("jac_incremental", 2.0, TypeError),
                            ("jac_stop_fraction", 1.2, ValueError), ("rand_f_thres_delta", -1, ValueError),
                            ("jac_loss_vecs", 0, ValueError), ("jac_loss_freq", "0.05", TypeError)]:
        with pytest.raises(err, match=key):
            mdeq("cifar10-small", lipschitz=False, **TINY2, **{key: value})
    jr = dict(jac_loss_weight=0.5, jac_loss_freq=0.05, rand_f_thres_delta=2)
    with pytest.raises(ConfigError, match="rand_f_thres_delta"):   # the a-priori count leaves nothing to shift
        mdeq("cifar10-small", lipschitz=True, init_power_iters=1, **TINY2, **jr)
    with pytest.raises(ConfigError, match="forward max_iter=2 - 2 < 1"):
        mdeq("cifar10-small", lipschitz=False, **original_solves(2), **TINY2, **jr)
    mdeq("cifar10-small", lipschitz=True, init_power_iters=1, **TINY2, **dict(jr, rand_f_thres_delta=0))


def test_forward_arguments_are_checked():
    from lmdeq.errors import ConfigError

    model = mdeq("cifar10-small", lipschitz=False, **original_solves(3, 3), **TINY2)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match="jac_loss"):
        model(x, jac_loss=1)
    with pytest.raises(ValueError, match="max_iter"):
        model(x, max_iter=0)
    with pytest.raises(TypeError, match="f_max_iter"):
        model(x, f_max_iter=2)                  # the flat spelling is gone
    lip = mdeq("cifar10-small", lipschitz=True, **APRIORI_SOLVES, init_power_iters=1, **TINY2)
    with pytest.raises(ConfigError, match="max_iter applies to checked solves"):
        lip(x, max_iter=3)
    logits, jr = model(x, jac_loss=True, max_iter=2)
    assert logits.shape == (1, 10) and jr.dim() == 0 and jr.requires_grad and model.last_info["f_nstep"] <= 3
