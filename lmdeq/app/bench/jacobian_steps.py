"""The speed-up benchmark's Jacobian-regularised steps (method (a-JR), the released MDEQ + JR recipe).

A JR method trains on ``CE + factor * jac_reg(f(z*), z*)`` on a random fraction p of its steps (the released
JAC_LOSS_FREQ, 0.05) with a forward cap moved by a random delta, and on CE alone on the others
(:mod:`lmdeq.app.train.jacobian`). Its cost per step is the mean over both kinds,

    t = (1 - p) * t_plain + p * t_JR,

and a benchmark of a few rounds would rarely draw a JR step at p = 0.05. So every timed round runs one step of
each kind (two entries of the interleaved rounds, ``<method>`` and ``<method>:jr``; the JR step with its delta
drawn as released), and the method's per-round time is the mean above from that round's two measurements: the
ratios against it are per round as for every method, the JR steps' cost included at their frequency. The row
also keeps both kinds' times apart (``train_plain_*``, ``train_jr_*``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..train.jacobian import JacobianSchedule
from .interleave import spread

__all__ = ["JR_SUFFIX", "JacobianSteps", "combine_rounds", "jacobian_table"]

JR_SUFFIX = ":jr"   # the interleaved-rounds key of a JR method's JR steps


class JacobianSteps:
    """The JR steps of one benchmark method (none when its model does not train with JR). ``forward(model, x,
    jr)`` runs the step's forward pass and returns (logits, the term to add to the loss or None): ``jr=True`` a
    JR step (the factor of the schedule's first step, the forward cap moved by a delta drawn as released),
    ``jr=False`` a plain step, ``jr=None`` the step the schedule draws. ``flags`` records each step's kind."""

    def __init__(self, model: torch.nn.Module, seed: int = 0):
        self.schedule = JacobianSchedule.for_model(model, seed)
        self.flags = []

    @property
    def enabled(self) -> bool:
        return self.schedule is not None

    @property
    def frequency(self) -> float:
        return self.schedule.freq if self.schedule is not None else 0.0

    def forward(self, model: torch.nn.Module, x: torch.Tensor, jr: Optional[bool] = None):
        if self.schedule is None:
            return model(x), None
        step = len(self.flags)
        if jr is None:
            draw = self.schedule.draw(step)
            jr, factor, kwargs = draw.jac_loss, draw.factor, draw.model_kwargs()
        elif jr:
            s = self.schedule
            delta = int(torch.randint(-s.delta, 2, [], generator=s.generator).item()) if s.delta > 0 else 0
            factor, kwargs = s.factor(0), {"jac_loss": True}
            if delta and s.max_iter is not None:
                kwargs["max_iter"] = s.max_iter + delta
        self.flags.append(bool(jr))
        if not jr:
            return model(x), None
        logits, term = model(x, **kwargs)
        return logits, factor * term


def combine_rounds(methods: Dict, seconds: Dict[str, list]) -> Dict[str, Dict]:
    """For each JR method among ``methods`` (objects with a ``jr`` :class:`JacobianSteps`) whose two kinds of
    steps were timed under ``name`` and ``name + JR_SUFFIX``: replace ``seconds[name]`` by the per-round mean
    (1 - p) t_plain + p t_JR and drop the JR entry; return {name: the row's JR fields}."""
    out = {}
    for name, m in methods.items():
        jr = getattr(m, "jr", None)
        if jr is None or not jr.enabled or name + JR_SUFFIX not in seconds:
            continue
        p = jr.frequency
        plain, with_jr = seconds[name], seconds.pop(name + JR_SUFFIX)
        if len(plain) != len(with_jr):
            raise ValueError(f"{name}: {len(plain)} plain and {len(with_jr)} JR steps timed; one of each per round")
        seconds[name] = [(1 - p) * a + p * b for a, b in zip(plain, with_jr)]
        out[name] = {"jr_frequency": p, "train_plain_ms_all": [1e3 * t for t in plain],
                     "train_jr_ms_all": [1e3 * t for t in with_jr],
                     "train_plain_spread": spread([1e3 * t for t in plain]),
                     "train_jr_spread": spread([1e3 * t for t in with_jr])}
    return out


def jacobian_table(rows) -> str:
    """Lines for the report: per JR row, the mean step time and the two kinds of steps apart."""
    lines = []
    for r in rows:
        if "jr_frequency" not in r:
            continue
        p = r["jr_frequency"]
        lines.append(f"- {r['weights']} {r['label']}: {r['train_ms']:.4g} ms per step = {1 - p:g} x plain step "
                     f"(median {r['train_plain_spread']['median']:.4g} ms) + {p:g} x JR step (median "
                     f"{r['train_jr_spread']['median']:.4g} ms), per round")
    if not lines:
        return ""
    return ("\n\nJacobian-regularised training steps (every round times one plain and one JR step; the method's "
            "time is their mean at the JR frequency):\n\n" + "\n".join(lines))
