"""The statistics of an MDEQ's latest forward (and backward) solve, kept as tensors until read.

``last_info`` (:meth:`SolveStats.read`) gives python numbers: f_nstep (forward f-evaluations), f_residual
(final relative residual, batch mean), converged (fraction of the batch below its tolerance), b_nstep and
b_residual (after a backward pass; 0 and nan before), cuda_graph (whether the forward solve was a CUDA-graph
replay), graph_captures (CUDA-graph captures so far), and lipschitz_bound when the solve used it. Reading
syncs with the device.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["SolveStats"]


class SolveStats:
    def __init__(self):
        self._info = {}

    def bound_used(self, bound: Optional[float]) -> None:
        """The certified bound the latest solve's counts came from (None: it used none)."""
        self._info.pop("lipschitz_bound", None)
        if bound is not None:
            self._info["lipschitz_bound"] = bound

    def forward(self, info: dict, graph_captures: int) -> None:
        """A forward solve's info (:class:`lmdeq.solvers.SolverInfo`); the backward figures reset."""
        self._info.update(f_nstep=info["f_evals"].long(), f_residual=info["rel_lowest"].mean(),
                          converged=info["converged"].float().mean(), b_nstep=0, b_residual=math.nan,
                          cuda_graph=getattr(info, "cuda_graph", False), graph_captures=graph_captures)

    def backward(self, info: dict) -> None:
        """The adjoint solve's info (deq_solve's ``on_backward``)."""
        self._info.update(b_nstep=info["f_evals"].long(), b_residual=info["rel_lowest"].mean())

    def unrolled(self, layers: int, rel: torch.Tensor, tol: float, backprop: bool) -> None:
        """An unrolled forward pass of ``layers`` f-applications with last-step relative changes ``rel`` (B,);
        as many vector-Jacobian products when it will be backpropagated."""
        self._info.update(f_nstep=layers, f_residual=rel.mean(), converged=(rel < tol).float().mean(),
                          b_nstep=layers if backprop else 0, b_residual=math.nan, cuda_graph=False)

    def read(self) -> dict:
        return {k: (v.item() if torch.is_tensor(v) else v) for k, v in self._info.items()}
