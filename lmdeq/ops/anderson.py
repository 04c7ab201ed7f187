"""Anderson history work, op 2: each in one pass that reads every history buffer once.

With history buffers X, F of shape (B, m, n) (iterates and their images) and residuals
G_j = F[:, j] - X[:, j]:

    anderson_gram_row(X, F, k)        H[b, j] = <G_k, G_j>                         (B, m), fp32/fp64
    anderson_mix(X, F, alpha, tau)    x[b] = sum_j alpha[b, j] ((1 - tau) X[b, j] + tau F[b, j])
                                                                                    (B, n), X's dtype

The Gram row is reduced per (sample, chunk) then in chunk order: deterministic. No autograd (these
run inside solvers under no_grad).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..numerics import acc_dtype
from . import backends, reference, validation
from .dispatch import eager_fast_path
from .layout import unit_inner_stride

__all__ = ["anderson_gram_row", "anderson_mix"]

_GRAM = "lmdeq.ops.anderson_gram_row"
_MIX = "lmdeq.ops.anderson_mix"


def _check_history(op: str, X: Tensor, Fh: Tensor) -> None:
    validation.float_tensor(op, "X", X)
    validation.float_tensor(op, "F", Fh)
    validation.rank(op, "X", X, 3, "(B, m, n)")
    validation.same_dtype_device(op, "F", Fh, "X", X)
    validation.same_shape(op, "F", Fh, "X", X)


def _check_k(op: str, k: int, m: int) -> None:
    if not 0 <= k < m:
        raise ConfigError(f"{op}: argument 'k' must be in [0, m) = [0, {m}), got {k}")


def _check_alpha(op: str, alpha: Tensor, X: Tensor) -> None:
    validation.float_tensor(op, "alpha", alpha)
    if alpha.device != X.device:
        raise ConfigError(f"{op}: argument 'alpha' is on {alpha.device} but 'X' is on {X.device}")
    if tuple(alpha.shape) != tuple(X.shape[:2]):
        raise ConfigError(f"{op}: argument 'alpha' must have shape (B, m) = {tuple(X.shape[:2])}, "
                         f"got {tuple(alpha.shape)}")


def _gram_row(X: Tensor, F: Tensor, k: int) -> Tensor:
    _check_history(_GRAM, X, F)
    _check_k(_GRAM, k, X.shape[1])
    backend = backends.choose(X.device)
    if backend in ("cpu", "cuda"):
        return torch.ops.lmdeq_C.anderson_gram_row(X, F, k)
    X, F = unit_inner_stride(X), unit_inner_stride(F)
    if backend == "triton":
        return backends.run_triton("anderson_gram_row", X.device, X, F, k)
    return reference.anderson_gram_row(X, F, k).contiguous()


def _mix(X: Tensor, F: Tensor, alpha: Tensor, tau: float) -> Tensor:
    _check_history(_MIX, X, F)
    _check_alpha(_MIX, alpha, X)
    backend = backends.choose(X.device)
    if backend in ("cpu", "cuda"):
        return torch.ops.lmdeq_C.anderson_mix(X, F, alpha, tau)
    X, F = unit_inner_stride(X), unit_inner_stride(F)
    if backend == "triton":
        return backends.run_triton("anderson_mix", X.device, X, F, alpha, tau)
    return reference.anderson_mix(X, F, alpha, tau).contiguous()


@torch.library.custom_op("lmdeq::anderson_gram_row", mutates_args=())
def _gram_row_op(X: Tensor, F: Tensor, k: int) -> Tensor:
    return _gram_row(X, F, k)


@_gram_row_op.register_fake
def _(X, F, k):
    _check_history(_GRAM, X, F)
    _check_k(_GRAM, k, X.shape[1])
    return X.new_empty(X.shape[:2], dtype=acc_dtype(X.dtype))


@torch.library.custom_op("lmdeq::anderson_mix", mutates_args=())
def _mix_op(X: Tensor, F: Tensor, alpha: Tensor, tau: float) -> Tensor:
    return _mix(X, F, alpha, tau)


@_mix_op.register_fake
def _(X, F, alpha, tau):
    _check_history(_MIX, X, F)
    _check_alpha(_MIX, alpha, X)
    return X.new_empty(X.shape[0], X.shape[2])


def anderson_gram_row(X: Tensor, F: Tensor, k: int) -> Tensor:
    """Row k of the Gram matrix of the residuals G_j = F[:, j] - X[:, j] of an Anderson history.

    Args:
        X, F: history buffers (B, m, n), same dtype and device (unit stride along n avoids a copy).
        k: the row, 0 <= k < m (usually the slot just written).
    Returns:
        H (B, m) with H[b, j] = <G_k, G_j>, fp32 (fp64 for fp64 histories).
    """
    validation.are_tensors(_GRAM, X=X, F=F)
    k = validation.integer(_GRAM, "k", k, 0)
    return _gram_row(X, F, k) if eager_fast_path(X, F) else _gram_row_op(X, F, k)


def anderson_mix(X: Tensor, F: Tensor, alpha: Tensor, tau: float) -> Tensor:
    """Anderson mixing x[b] = sum_j alpha[b, j] ((1 - tau) X[b, j] + tau F[b, j]).

    Args:
        X, F: history buffers (B, m, n); alpha: weights (B, m), any float dtype; tau: damping.
    Returns:
        x (B, n) in X's dtype, accumulated in fp32 (fp64 for fp64).
    """
    validation.are_tensors(_MIX, X=X, F=F, alpha=alpha)
    tau = validation.real_number(_MIX, "tau", tau)
    return _mix(X, F, alpha, tau) if eager_fast_path(X, F, alpha) else _mix_op(X, F, alpha, tau)
