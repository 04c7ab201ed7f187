"""The multiscale DEQ image classifier (original MDEQ or Lipschitz MDEQ with a certified bound), and
:func:`mdeq`, the factory that builds it from a preset.

    logits = head(z*),   z* = f(z*; x),   f = MDEQCell with the injection stem(x) (see mdeq_cell.py; the stem,
    injection and head around it: outer.py)

The public surface the trainer relies on:

* ``model(x)`` -> logits (B, num_classes) for x of shape (B, in_channels, image_size, image_size) (3, 32 for
  CIFAR; ``model.input_shape``);
* ``model.last_info`` -> python numbers of the latest forward (and backward) solve (solves.py);
* ``model.constraint_step()`` after each ``optimizer.step()`` (the constraint upkeep of the Lipschitz
  variant, constraints.py; with an unrolled warm-up it also counts the optimiser steps);
* ``model.lipschitz_bound()`` -> certified bound on Lip(f) w.r.t. z (inf for the original variant);
* ``model.fixed_point_problem(x)`` -> (f, z0) (problem.py);
* ``model.graphs`` -> the :class:`~lmdeq.cuda_graphs.GraphCache` of its CUDA-graphed solves (used on CUDA
  with exact a-priori counts, :data:`~lmdeq.models.presets.APRIORI_SOLVES`, and ``cuda_graphs=True``; problem.py);
* ``model.config`` with ``mdeq(**model.config)`` rebuilding the model;
* ``model(x, jac_loss=True, max_iter=k)`` -> (logits, the Jacobian-regularisation estimate
  :func:`lmdeq.deq.jac_reg` (f(z*), z*) with ``jac_loss_vecs`` vectors), the forward solve capped at k
  iterations for this call (the released JR recipe's random threshold; see presets.py).

The solves come from the config's ``forward`` / ``backward`` sections, resolved against the certified bound
(solves.py) by ``model.deq``, the :class:`~lmdeq.models.CertifiedDEQ` over the cell that runs every solve, keeps
the norm estimates and the iteration budgets (certified.py); the model owns the cell (its state_dict keys are
``cell.*``), the DEQ refers to it. Unrolled warm-up (``unrolled_warmup_steps = P >
0``, the original MDEQ recipe's PRETRAIN_STEPS, problem.py): while fewer than P optimiser steps have been
counted (buffer ``optimizer_steps``, saved with the weights), a forward pass returns head(f^L(0)) with L =
``unrolled_layers``, trained by backpropagation through the L applications (in training and evaluation alike,
as locuslab's code does); from step P on it is a DEQ (solve, implicit backward).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import checks
from ..deq import jac_reg, jacobian_pair
from .authors_cap import ReleasedConvCap
from .cell_options import CellOptions
from .certified import CertifiedDEQ
from .mdeq_cell import MDEQCell
from .outer import (ClassificationHead, check_images, init_outer_weights, make_injection, make_stem,
                    state_resolution)
from .presets import input_shape, resolve_config
from .problem import fixed_point_problem, graphed_problem, unrolled
from .solves import solves_of

__all__ = ["MDEQClassifier", "mdeq"]


def mdeq(preset: str, lipschitz: bool = True, **overrides) -> "MDEQClassifier":
    """Build the MDEQ classifier ``preset`` (see :data:`lmdeq.models.PRESETS`), original or Lipschitz variant,
    with ``overrides`` of its config (:func:`lmdeq.models.resolve_config`)."""
    return MDEQClassifier(resolve_config(preset, lipschitz, **overrides))


def _contraction_hint(cfg: dict) -> str:
    """What the error for a bound L >= 1 advises: the settings that set it, with their values."""
    if not cfg["lipschitz"]:
        return ""
    knobs = ", ".join(f"{k}={cfg[k]}" for k in ("s", "alpha", "beta", "conv_cap", "gamma_max"))
    return (f"; lower s, alpha, beta or conv_cap ({knobs}), or set forward_budget / backward_budget (which scale "
            "the caps down)")


class MDEQClassifier(nn.Module):
    """MDEQ classifier built from a config: ``MDEQClassifier(model.config)`` or, equivalently,
    ``lmdeq.models.mdeq(**config)`` (the config is validated and completed by ``resolve_config``)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = resolve_config(**config)
        cfg = self.config
        self.lipschitz = cfg["lipschitz"]
        channels = cfg["channels"]
        self.input_shape = input_shape(cfg)
        resolution = state_resolution(cfg["image_size"], cfg["downsample"], len(channels))
        self.stem = make_stem(cfg["in_channels"], channels[0], cfg["downsample"])
        self.injection = make_injection(channels[0], len(channels))
        self.cell = MDEQCell(channels, resolution, CellOptions.from_config(cfg))
        self.head = ClassificationHead(channels, cfg["head_channels"], cfg["final_channels"], cfg["num_classes"])
        init_outer_weights(self.stem, self.injection, self.head)
        forward, backward = solves_of(cfg)
        # The cell's solves, bound, budgets and norm upkeep: a CertifiedDEQ over the cell, which this model owns
        # (its parameters and buffers keep their names cell.*), so the DEQ is kept as a plain attribute.
        self.__dict__["deq"] = CertifiedDEQ(
            self.cell, forward=forward, backward=backward, forward_budget=cfg.get("forward_budget"),
            backward_budget=cfg.get("backward_budget"), power_iters=cfg.get("power_iters") or 2,
            init_power_iters=cfg.get("init_power_iters") or 30, cuda_graphs=cfg["cuda_graphs"], strict=False,
            hint=_contraction_hint(cfg))
        self.register_load_state_dict_post_hook(self.deq.budget_after_load)   # (torch does not reach self.deq)
        released = self.lipschitz and cfg["constraint"] == "released"
        self.released_cap = ReleasedConvCap(self, cfg["conv_cap"]) if released else None
        if cfg["unrolled_warmup_steps"] > 0:
            self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.int64))

    def fixed_point_problem(self, x: torch.Tensor):
        """(f, z0) for input x: f maps a list of branch tensors to a list, with x's injection fixed and
        this forward pass's dropout masks drawn; z0 is zeros of shapes (B, C_i, r / 2^i, r / 2^i), r the
        stem's output size (image_size / 2^downsample)."""
        check_images(x, self.input_shape[0], self.input_shape[1])
        f, z0, _ = fixed_point_problem(self.stem, self.injection, self.cell, x)
        return f, z0

    def in_unrolled_warmup(self) -> bool:
        """True while the unrolled warm-up lasts (fewer optimiser steps counted than unrolled_warmup_steps)."""
        steps = self.config["unrolled_warmup_steps"]
        return steps > 0 and int(self.optimizer_steps) < steps

    def forward(self, x: torch.Tensor, *, jac_loss: bool = False, max_iter: Optional[int] = None):
        """logits (B, num_classes); with ``jac_loss=True`` the pair (logits, jr), jr the 0-d Jacobian-
        regularisation estimate ``lmdeq.deq.jac_reg(f(z*), z*, vecs=config['jac_loss_vecs'])`` (differentiable;
        its Gaussian vectors come from torch's default CPU generator, as the released code's): on the tracked
        f(z*) of the implicit backward, at no extra f-evaluation (:func:`lmdeq.deq_solve`'s ``jacobian_pair``;
        another backward mode, a graphed adjoint or no grad: one more evaluation at z*), or, during the
        unrolled warm-up, at one more evaluation at the last unrolled state detached (as the released code).
        ``max_iter``: this call's forward-solve iteration cap instead of the config's (checked solves with a
        count; the released JR recipe's f_thres + delta)."""
        checks.boolean("jac_loss", jac_loss, where="MDEQClassifier: ")
        if max_iter is not None:
            max_iter = checks.integer("max_iter", max_iter, 1, where="MDEQClassifier: ")
        check_images(x, self.input_shape[0], self.input_shape[1])
        self.deq.refresh_stale()
        f, z0, injection = fixed_point_problem(self.stem, self.injection, self.cell, x)
        if self.in_unrolled_warmup():
            with self.cell.frozen_weights():
                z, rel = unrolled(f, z0, self.config["unrolled_layers"])
                pair = jacobian_pair(f, [p.detach() for p in z]) if jac_loss else None
            self.deq.stats.unrolled(self.config["unrolled_layers"], rel, self.deq.solves.forward.tol,
                                    backprop=torch.is_grad_enabled() and self.training)
            return self._output(self.head(z), pair)
        graph = None
        if self.config["cuda_graphs"] and self.graphs.enabled(injection.device):
            graph = graphed_problem(self.cell, self.graphs, injection, self.training)
        z, info = self.deq.solve(f, z0, graph=graph, jacobian_pair=jac_loss, max_iter=max_iter,
                                 bound=self.lipschitz_bound)
        return self._output(self.head(z), info.jacobian_pair if jac_loss else None)

    def _output(self, logits: torch.Tensor, pair):
        if pair is None:
            return logits
        return logits, jac_reg(pair.f0, pair.z0, vecs=self.config["jac_loss_vecs"])

    @property
    def last_info(self) -> dict:
        """Latest solve statistics as python numbers (see :class:`lmdeq.models.solves.SolveStats`). Reading syncs."""
        return self.deq.last_info

    @property
    def graphs(self):
        """The :class:`~lmdeq.cuda_graphs.GraphCache` of this model's solves (its CertifiedDEQ's; assignable)."""
        return self.deq.graphs

    @graphs.setter
    def graphs(self, cache) -> None:
        self.deq.graphs = cache

    def graph_stats(self) -> dict:
        """The CUDA-graph counters of this model's solves (:meth:`lmdeq.cuda_graphs.GraphCache.stats`). A
        capture happens on the first solve of each (mode, batch shape, a-priori counts, autocast, backend);
        a benchmark reads this before and after its timed steps to see whether any capture fell inside."""
        return self.graphs.stats()

    def constraint_step(self, n_iter: int | None = None) -> None:
        """Per-training-step upkeep (call after ``optimizer.step()``): with an unrolled warm-up, count the
        step; then the constraint of the Lipschitz variant (:mod:`lmdeq.models.constraints`; ``n_iter`` power
        iterations, default config ``power_iters``). No constraint for the original variant."""
        if self.config["unrolled_warmup_steps"] > 0:
            with torch.no_grad():
                self.optimizer_steps += 1
        if not self.lipschitz:
            return
        if self.released_cap is not None:
            self.released_cap.apply_()
        self.deq.constraint_step(n_iter)

    def lipschitz_bound(self) -> float:
        """Certified upper bound L on the Lipschitz constant of z -> f(z; x), for any x, in the l2 norm of
        the concatenated multi-resolution state (per sample), in the current mode (training mode includes
        dropout's 1/(1-p)). It is ||K||_2 for the branch-level matrix K of mdeq_cell.py, built from the
        conv bounds min(conv_cap, (1 + sigma_margin) sigma_hat), the gamma caps, s, alpha, beta, the
        fusion weights and the upsampling factors. It certifies Lip(f) <= L given that every conv's true
        operator norm is at most (1 + sigma_margin) times its power-iteration estimate (the tests check
        this against dense Jacobians). inf for the original MDEQ (standard GroupNorm is not Lipschitz)."""
        return self.deq.lipschitz_bound()   # (re-estimates layers whose weights changed in place)

    def verified_lipschitz_bound(self) -> float:
        """:meth:`lipschitz_bound` with every conv bounded by its verified operator norm (polyphase circulant
        embedding, :mod:`lmdeq.models.verified`) instead of (1 + sigma_margin) sigma_hat: the same rules, no
        assumption about the estimates. inf for the original MDEQ."""
        return self.deq.verified_lipschitz_bound()
