"""Argument checks of the public ops: clear errors naming the op and the argument.

The tensor checks of the ops; scalars go through :mod:`lmdeq.checks` with the op as ``where``. As there,
a wrong kind of value (not a tensor, integer dtype, dtypes that differ, non-numeric tau) raises
:class:`~lmdeq.errors.ConfigTypeError` (a TypeError), a wrong shape, rank, device, length or range
:class:`~lmdeq.errors.ConfigError` (a ValueError). The compiled kernels repeat these checks (TORCH_CHECK)
for direct calls of ``torch.ops.lmdeq_C``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import checks
from ..errors import ConfigError, ConfigTypeError

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def float_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ConfigTypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ConfigTypeError(f"{op}: argument '{name}' must be float32, float64, float16 or bfloat16, got {t.dtype}")


def are_tensors(op: str, **named) -> None:
    """Type check before the dispatcher sees the arguments (it would reject a non-tensor with a
    message that does not name the public op)."""
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ConfigTypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")


def same_dtype_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise ConfigTypeError(f"{op}: argument '{name}' has dtype {t.dtype} but '{ref_name}' has dtype {ref.dtype}")
    if t.device != ref.device:
        raise ConfigError(f"{op}: argument '{name}' is on {t.device} but '{ref_name}' is on {ref.device}")


def same_shape(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.shape != ref.shape:
        raise ConfigError(f"{op}: argument '{name}' has shape {tuple(t.shape)} but '{ref_name}' has shape "
                          f"{tuple(ref.shape)}")


def rank(op: str, name: str, t: torch.Tensor, ndim: int, what: str) -> None:
    if t.dim() != ndim:
        raise ConfigError(f"{op}: argument '{name}' must be {ndim}-d {what}, got shape {tuple(t.shape)}")


def real_number(op: str, name: str, x) -> float:
    return checks.number(f"argument '{name}'", x, where=f"{op}: ")


def integer(op: str, name: str, x, minimum: int) -> int:
    return checks.integer(f"argument '{name}'", x, minimum, where=f"{op}: ")


def tensor_list(op: str, name: str, ts, allow_empty: bool) -> list:
    if isinstance(ts, torch.Tensor) or not isinstance(ts, Sequence):
        raise ConfigTypeError(f"{op}: argument '{name}' must be a list of tensors, got {type(ts).__name__}")
    if not ts and not allow_empty:
        raise ConfigError(f"{op}: argument '{name}' must hold at least one tensor")
    if not all(isinstance(t, torch.Tensor) for t in ts):
        are_tensors(op, **{f"{name}[{i}]": t for i, t in enumerate(ts)})
    return list(ts)


def same_length(op: str, **lists) -> None:
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"'{k}' has {v}" for k, v in lengths.items())
        raise ConfigError(f"{op}: the lists must have equal lengths: {desc}")
