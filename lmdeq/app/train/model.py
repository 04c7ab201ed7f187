"""The model of a run: built from the training config or a checkpoint's ``model_config``, checked before
any data is read, and loaded with checkpoint weights that must be finite and fit it.

Checks, each a one-line error naming where the setting came from:

* the config resolves (preset, ``--set`` keys and values, the flat solve keys through
  :mod:`lmdeq.app.flat_solves`: :func:`lmdeq.models.resolve_config`);
* a model whose solvers run the a-priori iteration count (``max_iter=Apriori()``: ``--set f_max_iter=none``,
  ``--set solve_mode=apriori``) has a certified bound L < 1 in training and inference mode, without which that
  count does not exist;
* checkpoint weights are finite and match the model's parameter names and shapes.
"""
from __future__ import annotations

import torch

from ...errors import CheckpointError, ConfigError, first_line
from ...models.solves import needs_bound
from ..flat_solves import model_arguments
from .config import TrainConfig
from .hooks import certified_bound, model_config


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """``lmdeq.models.mdeq(preset, lipschitz=..., **model_overrides)`` (the flat solve keys turned into the
    ``forward``/``backward`` sections, :mod:`lmdeq.app.flat_solves`); ConfigError for a bad preset or override."""
    from lmdeq.models import mdeq

    try:
        return mdeq(cfg.preset, lipschitz=cfg.lipschitz,
                    **model_arguments(cfg.preset, cfg.lipschitz, cfg.model_overrides))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model config (--preset/--set): {first_line(err)}") from err


def model_from_config(config: dict, source: str = "checkpoint") -> torch.nn.Module:
    """``lmdeq.models.mdeq(**config)`` for a checkpoint's ``model_config``; CheckpointError if it does not
    build."""
    from lmdeq.models import mdeq

    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: model_config must be a dict, got {type(config).__name__}")
    try:
        return mdeq(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its model_config does not build a model: {first_line(err)}") from err


def needs_certified_bound(model: torch.nn.Module) -> bool:
    """True when the model's solvers take their iteration count from the certified bound."""
    cfg = model_config(model) or {}
    return "forward" in cfg and "backward" in cfg and needs_bound(cfg)


def check_solvable(model: torch.nn.Module, source: str, error: type = ConfigError) -> None:
    """``error`` naming ``source`` when the model's a-priori iteration count does not exist (L >= 1)."""
    if not needs_certified_bound(model):
        return
    for training in (True, False):
        bound = certified_bound(model, training=training)
        if bound is not None and not bound < 1.0:
            mode = "training" if training else "inference"
            raise error(f"{source}: the certified bound L = {bound:.4g} ({mode} mode) is not < 1, so the a-priori "
                        "solver iteration count (max_iter=Apriori(): f_max_iter/b_max_iter none, or solve_mode=apriori) "
                        "does not exist; lower s, alpha, beta or conv_cap, or set f_max_iter and b_max_iter (the "
                        "solves are then not certified)")


def check_finite_weights(state: dict, source: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: non-finite weights (NaN/Inf) in {len(bad)} tensor(s), e.g. {bad[:3]}; "
                              "the run diverged or the file was altered: use an earlier checkpoint")


def load_weights(model: torch.nn.Module, state: dict, source: str) -> None:
    """``model.load_state_dict(state)`` (strict) after checking the weights are finite; CheckpointError
    naming ``source`` for missing, unexpected or mis-shaped tensors."""
    check_finite_weights(state, source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"mis-shaped {shapes[:3]}" if shapes else ""]
        raise CheckpointError(f"{source}: its weights do not fit the model its model_config builds ("
                              + "; ".join(p for p in parts if p) + ")")
    model.load_state_dict(state)

