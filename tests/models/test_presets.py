"""Presets, parameter counts, config round trip, and clear errors for bad configs."""
import json

import pytest
import torch

from lmdeq.models import AUTHORS_SOLVER, PRESETS, mdeq

from .tiny import TINY2


@pytest.mark.parametrize("preset,expected", [("cifar10-small", 159e3), ("cifar10-large", 11.1e6)])
@pytest.mark.parametrize("lipschitz", [False, True])
def test_preset_parameter_counts(preset, expected, lipschitz):
    kw = {"init_power_iters": 1} if lipschitz else {}
    model = mdeq(preset, lipschitz=lipschitz, **kw)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.01, count


def test_presets_are_named():
    assert set(PRESETS) == {"cifar10-large", "cifar10-small"}


@pytest.mark.parametrize("lipschitz", [False, True])
def test_config_round_trip_rebuilds_the_same_model(lipschitz):
    torch.manual_seed(0)
    extra = {} if lipschitz else {"f_max_iter": 4, "b_max_iter": 4}   # keep Broyden short on CPU
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
    assert (orig["f_solver"], orig["b_solver"], orig["f_max_iter"], orig["b_max_iter"]) == ("broyden", "broyden", 18, 20)
    assert (orig["f_tol"], orig["f_stop_mode"], orig["b_stop_mode"]) == (1e-3, "rel", "rel")
    small = mdeq("cifar10-small", lipschitz=False).config
    assert (small["f_max_iter"], small["b_max_iter"], small["dropout"]) == (18, 20, 0.25)   # cls_mdeq_TINY.yaml
    assert (orig["b_x0"], small["b_x0"], orig["unrolled_warmup_steps"]) == ("zeros", "zeros", 0)
    lip = mdeq("cifar10-small", init_power_iters=1).config
    assert {k: lip[k] for k in ("s", "gamma_max", "alpha", "beta", "conv_cap")} == dict(
        s=0.4, gamma_max=1.0, alpha=0.5, beta=0.3, conv_cap=2.0)
    authors = mdeq("cifar10-small", init_power_iters=1, **AUTHORS_SOLVER).config
    assert (authors["f_solver"], authors["f_solver_kwargs"], authors["f_max_iter"], authors["b_max_iter"]) == (
        "authors_anderson", {"m": 6, "lam": 1e-4}, 18, 20)
    assert (authors["b_x0"], lip["b_x0"]) == ("zeros", "v")


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
    (dict(f_solver="newton"), ValueError, "solver"),
    (dict(f_stop_mode="max"), ValueError, "f_stop_mode"),
    (dict(b_stop_mode="max"), ValueError, "b_stop_mode"),
    (dict(solve_mode="fast"), ValueError, "solve_mode"),
    (dict(solve_mode="apriori", f_solver="anderson"), ValueError, "fixed_point"),
    (dict(f_stop_mode="abs"), ValueError, "stop_mode='rel'.*f_stop_mode=rel"),
    (dict(b_stop_mode="abs"), ValueError, "stop_mode='rel'.*b_stop_mode=rel"),
    (dict(f_max_iter=0), ValueError, "f_max_iter"),
    (dict(backward="exact"), ValueError, "backward"),
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
        mdeq("cifar10-small", lipschitz=False, f_max_iter=None)
    with pytest.raises(ValueError, match="apriori"):
        mdeq("cifar10-small", lipschitz=False, solve_mode="apriori")


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
    with pytest.raises(ConfigError, match="f_max_iter=2 - 2 < 1"):
        mdeq("cifar10-small", lipschitz=False, f_max_iter=2, **TINY2, **jr)
    mdeq("cifar10-small", lipschitz=True, init_power_iters=1, **TINY2, **dict(jr, rand_f_thres_delta=0))


def test_forward_arguments_are_checked():
    from lmdeq.errors import ConfigError

    model = mdeq("cifar10-small", lipschitz=False, f_max_iter=3, b_max_iter=3, **TINY2)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match="jac_loss"):
        model(x, jac_loss=1)
    with pytest.raises(ValueError, match="f_max_iter"):
        model(x, f_max_iter=0)
    lip = mdeq("cifar10-small", lipschitz=True, solve_mode="apriori", init_power_iters=1, **TINY2)
    with pytest.raises(ConfigError, match="f_max_iter applies to checked solves"):
        lip(x, f_max_iter=3)
    logits, jr = model(x, jac_loss=True, f_max_iter=2)
    assert logits.shape == (1, 10) and jr.dim() == 0 and jr.requires_grad and model.last_info["f_nstep"] <= 3
