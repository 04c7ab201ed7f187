"""The multiscale DEQ image classifier (original MDEQ or Lipschitz MDEQ with a certified bound).

    logits = head(z*),   z* = f(z*; x),   f = MDEQCell with the injection stem(x) (see mdeq_cell.py)

Build it with :func:`lmdeq.models.mdeq`. The public surface the trainer relies on:

* ``model(x)`` -> logits (B, num_classes) for x of shape (B, 3, 32, 32);
* ``model.last_info`` -> python numbers of the latest forward (and backward) solve;
* ``model.constraint_step()`` after each ``optimizer.step()`` (the constraint upkeep of the Lipschitz
  variant; with an unrolled warm-up it also counts the optimiser steps);
* ``model.lipschitz_bound()`` -> certified bound on Lip(f) w.r.t. z (inf for the original variant);
* ``model.fixed_point_problem(x)`` -> (f, z0);
* ``model.graphs`` -> the :class:`~lmdeq.cuda_graphs.GraphCache` of its CUDA-graphed solves (used on CUDA
  with ``solve_mode='apriori'`` and ``cuda_graphs=True``);
* ``model.config`` with ``mdeq(**model.config)`` rebuilding the model.

Unrolled warm-up (``unrolled_warmup_steps = P > 0``, the original MDEQ recipe's PRETRAIN_STEPS): while
fewer than P optimiser steps have been counted (buffer ``optimizer_steps``, saved with the weights), a
forward pass computes z_L = f(...f(f(0))) with L = ``unrolled_layers`` and returns head(z_L), trained by
backpropagation through the L applications (in training and evaluation alike, as locuslab's code
does); from step P on it is a DEQ (solve, implicit backward).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from ..cuda_graphs import GraphCache
from ..deq import GraphedProblem, deq_solve
from ..errors import NonFiniteError
from ..solvers import Result
from .apriori import adjoint_apriori_iterations, apriori_iterations
from .authors_cap import ReleasedConvCap
from .cell_options import CellOptions
from .head import ClassificationHead
from .mdeq_cell import MDEQCell
from .norm_estimates import update_norm_estimates
from .presets import resolve_config
from .stem import make_injection, make_stem

__all__ = ["MDEQClassifier", "IMAGE_SIZE", "IN_CHANNELS"]

IMAGE_SIZE = 32
IN_CHANNELS = 3


class MDEQClassifier(nn.Module):
    """MDEQ classifier built from a config: ``MDEQClassifier(model.config)`` or, equivalently,
    ``lmdeq.models.mdeq(**config)`` (the config is validated and completed by ``resolve_config``)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = resolve_config(**config)
        cfg = self.config
        self.lipschitz = cfg["lipschitz"]
        knobs = {k: cfg[k] for k in ("s", "gamma_max", "alpha", "beta", "conv_cap", "sigma_margin")
                 if self.lipschitz}
        certified = self.lipschitz and cfg["constraint"] == "certified"
        if self.lipschitz and not certified:
            knobs["conv_cap"] = None  # no certified parametrisation ('released': the post-step cap below)
        options = CellOptions(lipschitz=self.lipschitz, expansion=cfg["expansion"], num_groups=cfg["num_groups"],
                              dropout=cfg["dropout"], weight_norm=cfg["weight_norm"], **knobs)
        channels = cfg["channels"]
        self.stem = make_stem(IN_CHANNELS, channels[0])
        self.injection = make_injection(channels[0], len(channels))
        self.cell = MDEQCell(channels, IMAGE_SIZE, options)
        self.head = ClassificationHead(channels, cfg["head_channels"], cfg["final_channels"], cfg["num_classes"])
        self._init_outer_weights()
        self._convs = self.cell.convs()
        self._bound_cache = (None, None)
        self._info = {}
        self.graphs = GraphCache(max_graphs=8)
        released = self.lipschitz and cfg["constraint"] == "released"
        self._released_cap = ReleasedConvCap(self, cfg["conv_cap"]) if released else None
        if certified:
            update_norm_estimates(self._convs, cfg["init_power_iters"])
        if cfg["unrolled_warmup_steps"] > 0:
            self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.int64))

    def _init_outer_weights(self) -> None:
        """Stem and head as in MDEQ: conv weights and biases ~ N(0, 0.01), BN weight 1 and bias 0
        (the cell's convolutions initialise themselves, see deq_conv.py)."""
        for module in list(self.stem.modules()) + list(self.injection.modules()) + list(self.head.modules()):
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.normal_(module.bias, 0.0, 0.01)
            elif isinstance(module, nn.BatchNorm2d) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- input ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_input(x) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a tensor of images, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        expected = (IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
            raise ValueError(f"x must have shape (B, {IN_CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}) with B >= 1, "
                             f"got {tuple(x.shape)}")

    def fixed_point_problem(self, x: torch.Tensor):
        """(f, z0) for input x: f maps a list of branch tensors to a list, with x's injection fixed and
        this forward pass's dropout masks drawn; z0 is zeros of shapes (B, C_i, 32 / 2^i, 32 / 2^i)."""
        f, z0, _ = self._problem(x)
        return f, z0

    def _problem(self, x: torch.Tensor):
        """(f, z0, injection) of :meth:`fixed_point_problem`."""
        self._check_input(x)
        injection = self.injection(self.stem(x))
        batch = x.shape[0]
        self.cell.reset_dropout(batch, injection.device, injection.dtype)
        # The state keeps x's dtype (fp32) even when autocast computes f in bf16, and the injection's
        # memory format (channels_last when the model and input are), so f's outputs match it.
        fmt = torch.channels_last if injection.is_contiguous(memory_format=torch.channels_last) and \
            not injection.is_contiguous() else torch.contiguous_format
        z0 = self.cell.zero_state(batch, x.dtype, injection.device, fmt)   # f(z0) skips the convs of zero
        return self._cell_map(injection), z0, injection

    def _cell_map(self, injection: torch.Tensor):
        """z -> f(z) = cell(z, injection), returned in the state's dtype (under autocast the cell computes
        in low precision; the solver's state, residuals and updates stay in the state's dtype)."""
        cell = self.cell

        def f(z):
            return [out.to(zi.dtype) for out, zi in zip(cell(z, injection), z)]

        return f

    def _graphed_problem(self, injection: torch.Tensor):
        """The CUDA-graph description of f (see :class:`lmdeq.deq.GraphedProblem`): the injection and the
        dropout masks are the per-call inputs; the cell's parameters and norm estimates are read in place
        (their storage is part of the key, so moving the model re-captures; the autocast state is part of
        every key, see GraphedProblem.run)."""
        if not (self.config["cuda_graphs"] and self.graphs.enabled(injection.device)):
            return None
        cell = self.cell
        storage = tuple(t.data_ptr() for t in cell.parameters()) + tuple(t.data_ptr() for t in cell.buffers())

        @contextmanager
        def bind(static):
            with cell.swapped_dropout_masks(static[1:]), cell.frozen_weights():
                yield self._cell_map(static[0])

        return GraphedProblem(self.graphs, (self.training, storage), [injection, *cell.dropout_masks()], bind)

    # -- forward -------------------------------------------------------------------------------------------
    def in_unrolled_warmup(self) -> bool:
        """True while the unrolled warm-up lasts (fewer optimiser steps counted than unrolled_warmup_steps)."""
        steps = self.config["unrolled_warmup_steps"]
        return steps > 0 and int(self.optimizer_steps) < steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self._refresh_stale_estimates()
        if self.in_unrolled_warmup():
            return self._unrolled_forward(x)
        f, z0, injection = self._problem(x)
        kwargs = self._solve_kwargs()
        with self.cell.frozen_weights():
            z, info = deq_solve(f, z0, on_backward=self._record_backward, graph=self._graphed_problem(injection),
                                **kwargs)
        self._record_forward(info)
        # Checked solves read their residuals back anyway; a-priori (sync-free) solves are not read here.
        if self.config["solve_mode"] == "checked" and info.result is Result.NONFINITE:
            raise NonFiniteError("the forward solve produced NaN/Inf: non-finite input images or weights")
        return self.head(z)

    def _unrolled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """head(f^L(0)) as an explicit network (see the module docstring); last_info counts the L
        f-evaluations, and as many vector-Jacobian products through f when it will be backpropagated."""
        f, z, _ = self._problem(x)
        layers = self.config["unrolled_layers"]
        with self.cell.frozen_weights():
            for _ in range(layers):
                z_prev, z = z, f(z)
        with torch.no_grad():
            diff = torch.stack([((a - b) ** 2).flatten(1).sum(1) for a, b in zip(z, z_prev)]).sum(0).sqrt()
            rel = diff / (torch.stack([(a ** 2).flatten(1).sum(1) for a in z]).sum(0).sqrt() + 1e-9)
        backprop = torch.is_grad_enabled() and self.training
        self._info.update(f_nstep=layers, f_residual=rel.mean(), converged=(rel < self.config["f_tol"]).float().mean(),
                          b_nstep=layers if backprop else 0, b_residual=math.nan, cuda_graph=False)
        return self.head(z)

    def _solve_kwargs(self) -> dict:
        cfg = self.config
        kw = dict(solver=cfg["solver"], max_iter=cfg["f_max_iter"], tol=cfg["f_tol"], stop_mode=cfg["stop_mode"],
                  solver_kwargs=dict(cfg["solver_kwargs"]), backward=cfg["backward"], b_solver=cfg["b_solver"],
                  b_max_iter=cfg["b_max_iter"], b_tol=cfg["b_tol"], b_stop_mode=cfg["stop_mode"],
                  b_solver_kwargs=dict(cfg["b_solver_kwargs"]), b_x0=cfg["b_x0"])
        apriori = cfg["solve_mode"] == "apriori"
        self._info.pop("lipschitz_bound", None)
        if apriori or kw["max_iter"] is None or kw["b_max_iter"] is None:
            bound = self.lipschitz_bound()
            self._info["lipschitz_bound"] = bound
            f_count = apriori_iterations(bound, cfg["f_tol"], cfg["solver_kwargs"].get("tau", 1.0))
            b_count = adjoint_apriori_iterations(bound, cfg["b_tol"], cfg["b_solver_kwargs"].get("tau", 1.0))
            if apriori:
                kw.update(iterations=f_count, b_iterations=b_count, max_iter=f_count, b_max_iter=b_count)
            else:
                kw["max_iter"] = f_count if kw["max_iter"] is None else kw["max_iter"]
                kw["b_max_iter"] = b_count if kw["b_max_iter"] is None else kw["b_max_iter"]
        return kw

    def _record_forward(self, info: dict) -> None:
        self._info.update(f_nstep=info["f_evals"].long(), f_residual=info["rel_lowest"].mean(),
                          converged=info["converged"].float().mean(), b_nstep=0, b_residual=math.nan,
                          cuda_graph=getattr(info, "cuda_graph", False), graph_captures=self.graphs.captures)

    def _record_backward(self, info: dict) -> None:
        self._info.update(b_nstep=info["f_evals"].long(), b_residual=info["rel_lowest"].mean())

    @property
    def last_info(self) -> dict:
        """Latest solve statistics as python numbers: f_nstep (forward f-evaluations), f_residual (final
        relative residual, batch mean), converged (fraction of the batch below f_tol), b_nstep and
        b_residual (after a backward pass; 0 and nan before), cuda_graph (whether the forward solve was a
        CUDA-graph replay), graph_captures (CUDA-graph captures so far, see :meth:`graph_stats`), and
        lipschitz_bound when the solve used it.
        Reading it syncs with the device."""
        return {k: (v.item() if torch.is_tensor(v) else v) for k, v in self._info.items()}

    def graph_stats(self) -> dict:
        """The CUDA-graph counters of this model's solves (:meth:`lmdeq.cuda_graphs.GraphCache.stats`). A
        capture happens on the first solve of each (mode, batch shape, a-priori counts, autocast, backend);
        a benchmark reads this before and after its timed steps to see whether any capture fell inside."""
        return self.graphs.stats()

    # -- constraints and the certified bound ---------------------------------------------------------------
    @torch.no_grad()
    def constraint_step(self, n_iter: int | None = None) -> None:
        """Per-training-step upkeep (call after ``optimizer.step()``): with an unrolled warm-up, count the
        step. Lipschitz variant: with ``constraint='certified'``, ``n_iter`` (default: config
        ``power_iters``) warm-started power iterations refresh every conv's norm estimate, which the
        effective weights use at the next forward; with ``'released'`` the authors' released cap runs
        instead (authors_cap.py); with ``'none'`` no conv is touched. Then the GroupNorm gammas are
        clipped to [-gamma_max, gamma_max]. No constraint for the original variant."""
        if self.config["unrolled_warmup_steps"] > 0:
            self.optimizer_steps += 1
        if not self.lipschitz:
            return
        if self._released_cap is not None:
            self._released_cap.apply_()
        elif self.config["constraint"] == "certified":
            update_norm_estimates(self._convs, self.config["power_iters"] if n_iter is None else n_iter)
        for norm in self.cell.gamma_clipped_norms():
            norm.project_()

    def _refresh_stale_estimates(self) -> None:
        """Re-estimate, with ``init_power_iters`` iterations, the convs whose weights changed in place since
        their last estimate: the safety net for a missed constraint_step or a manual weight edit, where the
        change may be too large for a few warm-started iterations. (Loading a state dict restores weights
        and estimates together and counts as current.)"""
        if self.lipschitz:
            stale = [c for c in self._convs if c.estimate_is_stale()]
            if stale:
                update_norm_estimates(stale, self.config["init_power_iters"])

    def lipschitz_bound(self) -> float:
        """Certified upper bound L on the Lipschitz constant of z -> f(z; x), for any x, in the l2 norm of
        the concatenated multi-resolution state (per sample), in the current mode (training mode includes
        dropout's 1/(1-p)). It is ||K||_2 for the branch-level matrix K of mdeq_cell.py, built from the
        conv bounds min(conv_cap, (1 + sigma_margin) sigma_hat), the gamma caps, s, alpha, beta, the
        fusion weights and the upsampling factors. It certifies Lip(f) <= L given that every conv's true
        operator norm is at most (1 + sigma_margin) times its power-iteration estimate (the tests check
        this against dense Jacobians). inf for the original MDEQ (standard GroupNorm is not Lipschitz)."""
        self._refresh_stale_estimates()   # (a no-op unless weights changed in place since constraint_step)
        key = (self.training,) + tuple(t._version for t in self.cell.parameters()) + tuple(
            t._version for t in self.cell.buffers())
        if self._bound_cache[0] != key:
            self._bound_cache = (key, self.cell.lipschitz_bound())
        return self._bound_cache[1]
