"""The optional model hooks the trainer uses; any classifier ``model(x) -> logits`` works without them.

* ``model.last_info``: dict with 'f_nstep', 'f_residual', 'b_nstep', 'b_residual' of the last solve, and
  optionally 'converged' (the fraction of the batch whose forward solve reached its tolerance);
* ``model.constraint_step()``: re-imposes the Lipschitz constraint, called after every optimiser step;
* ``model.lipschitz_bound()``: the certified Lipschitz bound L of the equilibrium map (L < 1: contraction),
  possibly different in training and inference mode;
* ``model.config``: JSON-serialisable kwargs that rebuild the model.
"""
from __future__ import annotations

import torch

SOLVER_KEYS = ("f_nstep", "f_residual", "b_nstep", "b_residual")


def solver_stats(model: torch.nn.Module, keys=SOLVER_KEYS, info: dict | None = None) -> dict[str, float]:
    """The numeric solver statistics of the model's last forward/backward (absent keys left out);
    ``info``: an already read ``model.last_info``."""
    info = (getattr(model, "last_info", None) or {}) if info is None else info
    out = {}
    for k in keys:
        v = info.get(k)
        if v is not None:
            out[k] = float(v)
    return out


def adjoint_tol(cfg: dict):
    """The tolerance of a model config's implicit adjoint solve (None: no such solve)."""
    backward = cfg.get("backward")
    return backward.get("solver", {}).get("tol") if isinstance(backward, dict) else None


def solves_unconverged(model: torch.nn.Module, info: dict | None = None) -> bool | None:
    """Whether the last training step ran on a solve that did not reach its tolerance: the forward solve
    left a sample above tol (``last_info['converged'] < 1``), or the adjoint's batch-mean residual is above
    the tolerance of the model config's adjoint solver. None when the model reports neither."""
    info = (getattr(model, "last_info", None) or {}) if info is None else info
    cfg = model_config(model) or {}
    verdicts = []
    if info.get("converged") is not None:
        verdicts.append(float(info["converged"]) < 1.0)
    b_res, b_tol = info.get("b_residual"), adjoint_tol(cfg)
    if b_res is not None and b_tol is not None and info.get("b_nstep"):
        verdicts.append(not float(b_res) <= b_tol)
    return any(verdicts) if verdicts else None


def apply_constraint(model: torch.nn.Module) -> None:
    step = getattr(model, "constraint_step", None)
    if callable(step):
        step()


def certified_bound(model: torch.nn.Module, training: bool | None = None, verified: bool = False) -> float | None:
    """``model.lipschitz_bound()`` (``verified``: ``model.verified_lipschitz_bound()``, which rests on no norm
    estimate) as a float (None without the hook), in the model's current mode or, with ``training`` given, in that
    mode (the bound may depend on it, e.g. dropout's 1/(1-p) in training)."""
    bound = getattr(model, "verified_lipschitz_bound" if verified else "lipschitz_bound", None)
    if not callable(bound):
        return None
    was_training = model.training
    try:
        if training is not None:
            model.train(training)
        with torch.no_grad():
            return float(bound())
    finally:
        model.train(was_training)


def model_config(model: torch.nn.Module) -> dict | None:
    cfg = getattr(model, "config", None)
    return dict(cfg) if isinstance(cfg, dict) else None
