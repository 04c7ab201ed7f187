"""The per-step decision of Jacobian-regularised training (the released MDEQ + JR loop, Bai et al. ICML 2021).

What the released training loop does at every step (locuslab/deq and iiduka-researches/Lipschitz_mdeq,
MDEQ-Vision/lib/core/cls_function.py, ``train``), with the model config's keys (lmdeq.models.presets):

    s      = step - unrolled_warmup_steps                               (deq_steps = global_steps - PRETRAIN_STEPS)
    factor = 0                                   if s < 0               (PRETRAIN_JAC_LOSS_WEIGHT, 0 in the recipe)
             0                                   if step >= stop step   (epoch >= JAC_STOP_EPOCH)
             jac_loss_weight + 0.1 * (s // jac_incremental)   otherwise
    u      = rand()                              drawn at EVERY step, also when factor = 0
    jr     = u < jac_loss_freq and factor > 0                           (compute_jac_loss)
    delta  = randint(-rand_f_thres_delta, 2)     drawn only when rand_f_thres_delta > 0 and jr; else 0
    max_iter of the step's forward solve = its max_iter + delta         (f_thres = F_THRES + delta_f_thres)
    loss   = CE + factor * jr_estimate           on the jr steps, CE on the others

The stop step is ``round(jac_stop_fraction * total_steps)``: the recipe's JAC_STOP_EPOCH 90 of END_EPOCH 200
becomes the same fraction of whatever schedule is run (exactly step 90 * steps_per_epoch for 200 epochs); no
stop when the schedule length is not given (a benchmark's few steps). Extending a run (``lmdeq train --resume
--epochs E'``) moves the stop step to the fraction of the new length.

The released loop draws u and delta from torch's global generator, which also draws its dropout masks and
Hutchinson vectors; here they come from a dedicated ``torch.Generator`` seeded from the run's seed (stream
"jacobian"), in the same order (rand, then randint when drawn), so the decisions do not depend on anything
else the run draws and a resumed run continues them exactly: its state is saved in the run checkpoint's RNG
state (``rng['generators']['jacobian']``, :func:`lmdeq.app.train.checkpoint.capture_rng_state`). The Hutchinson
vectors are drawn by the model from torch's default generator, as released (saved with it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ... import checks
from ..data.split import derive_seed

__all__ = ["JacobianDraw", "JacobianSchedule", "GENERATOR_NAME", "forward_count"]

GENERATOR_NAME = "jacobian"   # its key among the run checkpoint's saved generators


def forward_count(config: dict) -> Optional[int]:
    """The forward solve's set iteration count in a model config (None: an a-priori count, or no such section)."""
    count = (config.get("forward") or {}).get("max_iter")
    return count if isinstance(count, int) else None


@dataclass(frozen=True)
class JacobianDraw:
    """One step's decision (see the module docstring)."""

    step: int                  # the optimiser step (0-based) it is for
    factor: float              # the JR weight of the step
    jac_loss: bool             # whether the step computes and trains on the JR estimate
    f_thres_delta: int         # delta of the forward solve's iteration cap (0 on the other steps)
    max_iter: Optional[int]    # the forward solve's cap for the step, None: the model's own

    def model_kwargs(self) -> dict:
        """Keyword arguments of the model call for this step (none on a step without JR)."""
        if not self.jac_loss:
            return {}
        return {"jac_loss": True, **({"max_iter": self.max_iter} if self.max_iter is not None else {})}


class JacobianSchedule:
    """The decisions of a JR run from a model ``config`` (:func:`lmdeq.models.resolve_config`'s keys),
    the run's ``seed`` and its schedule length ``total_steps`` (None: no stop step)."""

    def __init__(self, config: dict, seed: int = 0, total_steps: Optional[int] = None):
        self.weight = checks.number("jac_loss_weight", config["jac_loss_weight"], 0)
        self.freq = checks.number("jac_loss_freq", config["jac_loss_freq"], 0, 1)
        self.incremental = checks.integer("jac_incremental", config["jac_incremental"], 1)
        self.delta = checks.integer("rand_f_thres_delta", config["rand_f_thres_delta"], 0)
        self.warmup = checks.integer("unrolled_warmup_steps", config.get("unrolled_warmup_steps", 0), 0)
        self.max_iter = forward_count(config)
        fraction = checks.number("jac_stop_fraction", config["jac_stop_fraction"], 0, 1)
        if total_steps is not None:
            total_steps = checks.integer("total_steps", total_steps, 1)
        self.stop_step = None if total_steps is None else round(fraction * total_steps)
        self.seed = checks.integer("seed", seed, 0)
        self.generator = torch.Generator().manual_seed(derive_seed(self.seed, GENERATOR_NAME))

    @staticmethod
    def enabled(config: Optional[dict]) -> bool:
        """Whether ``config`` trains with JR (jac_loss_weight > 0 and jac_loss_freq > 0)."""
        return bool(config) and config.get("jac_loss_weight", 0.0) > 0 and config.get("jac_loss_freq", 0.0) > 0

    @classmethod
    def for_model(cls, model, seed: int = 0, total_steps: Optional[int] = None) -> Optional["JacobianSchedule"]:
        """The schedule of ``model.config``, or None when the model does not train with JR."""
        config = getattr(model, "config", None)
        return cls(config, seed, total_steps) if isinstance(config, dict) and cls.enabled(config) else None

    def factor(self, step: int) -> float:
        """The JR weight at optimiser step ``step`` (0-based)."""
        deq_steps = step - self.warmup
        if deq_steps < 0:
            return 0.0
        if self.stop_step is not None and step >= self.stop_step:
            return 0.0
        return self.weight + 0.1 * (deq_steps // self.incremental)

    def draw(self, step: int) -> JacobianDraw:
        """The decision for optimiser step ``step``; advances the generator as the released loop does."""
        step = checks.integer("step", step, 0)
        factor = self.factor(step)
        jac = torch.rand([], generator=self.generator).item() < self.freq and factor > 0
        delta = int(torch.randint(-self.delta, 2, [], generator=self.generator).item()) if self.delta > 0 and jac else 0
        max_iter = self.max_iter + delta if delta and self.max_iter is not None else None
        return JacobianDraw(step, factor, jac, delta, max_iter)

    # -- state ------------------------------------------------------------------------------------------
    def state(self) -> torch.Tensor:
        """The generator's state (a uint8 tensor; everything else is a function of the config and step)."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
