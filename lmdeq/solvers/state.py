"""Solver states: a tensor (batch first) or a list/tuple of tensors (a multi-resolution state, as in MDEQ).

The solvers see a state as a list of ``parts`` that share the batch dimension. ``StateLayout`` validates
a state against the initial guess and maps it to and from a flat (B, n) buffer with zero-copy views, so
Anderson and Broyden can keep their histories in one buffer while ``func`` still receives the user's
structure. Tensors with fewer than 2 dims follow TorchDEQ: every element is its own sample.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence

import torch

from ..errors import UnsupportedError
from ..numerics import acc_dtype

__all__ = ["StateLayout"]


class StateLayout:
    """The structure of a solver state, fixed by the initial guess ``x0``."""

    def __init__(self, x0, arg: str = "x0"):
        self.arg = arg
        if torch.is_tensor(x0):
            self.kind = "tensor"
            parts = [x0]
        elif isinstance(x0, (list, tuple)) and len(x0) > 0:
            self.kind = "tuple" if isinstance(x0, tuple) else "list"
            parts = list(x0)
        else:
            raise TypeError(f"{arg} must be a tensor or a non-empty list/tuple of tensors, got {type(x0).__name__}")
        for i, p in enumerate(parts):
            where = arg if self.kind == "tensor" else f"{arg}[{i}]"
            if not torch.is_tensor(p):
                raise TypeError(f"{where} must be a tensor, got {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(f"{where} must have a floating dtype, got {p.dtype}")
        self.user_shapes = [tuple(p.shape) for p in parts]
        # Internal shapes: batch first; a 0-d/1-d tensor is a batch of scalars (TorchDEQ's convention).
        self.shapes = [s if len(s) >= 2 else (math.prod(s), 1) for s in self.user_shapes]
        self.batch = self.shapes[0][0]
        for i, s in enumerate(self.shapes):
            if s[0] != self.batch:
                raise ValueError(f"{arg}[{i}] has batch size {s[0]}, but {arg}[0] has {self.batch}: "
                                 "all parts of a list state must share the batch dimension")
        self.dtype = parts[0].dtype
        self.device = parts[0].device
        if self.device.type == "meta":
            raise UnsupportedError(f"{arg} is on the meta device: a solve needs values (its stopping rule reads the residuals); "
                             "move the state to a real device (to_empty() / load weights first)")
        for i, p in enumerate(parts):
            if p.dtype != self.dtype:
                raise TypeError(f"{arg}[{i}] has dtype {p.dtype}, but {arg}[0] has {self.dtype}")
            if p.device != self.device:
                raise ValueError(f"{arg}[{i}] is on {p.device}, but {arg}[0] is on {self.device}")
        self.sizes = [math.prod(s[1:]) for s in self.shapes]
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.numel = self.offsets[-1]

    # -- conversions ---------------------------------------------------------------------------------
    def parts(self, state) -> List[torch.Tensor]:
        """The internal (batch-first) parts of a user-structured state."""
        parts = [state] if torch.is_tensor(state) else list(state)
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def external(self, parts: Sequence[torch.Tensor]):
        """The user's structure for internal parts (what ``func`` receives and the solver returns)."""
        parts = [p.reshape(s) for p, s in zip(parts, self.user_shapes)]
        if self.kind == "tensor":
            return parts[0]
        return tuple(parts) if self.kind == "tuple" else parts

    def views(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Zero-copy views of a (B, n) buffer row-block as the internal parts."""
        return [flat[:, a:b].view(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def pack(self, parts: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Copy internal parts into a (B, n) buffer (one copy per part; no concatenation temporary)."""
        for view, p in zip(self.views(out), parts):
            view.copy_(p)
        return out

    def norm(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-sample l2 norm (B,) over all internal parts, in the accumulation dtype."""
        acc = acc_dtype(self.dtype)
        sq = [p.reshape(self.batch, -1).to(acc).square().sum(dim=1) for p in parts]
        return torch.stack(sq).sum(dim=0).sqrt()

    def new_flat(self, *lead: int) -> torch.Tensor:
        """An uninitialised (B, *lead, n) buffer of the state's dtype and device."""
        return torch.empty(self.batch, *lead, self.numel, dtype=self.dtype, device=self.device)

    # -- validation ------------------------------------------------------------------------------------
    def check_output(self, out, name: str = "func") -> List[torch.Tensor]:
        """Validate ``func``'s output against the state structure and return its internal parts."""
        if torch.is_tensor(out):
            got = [out]
            if self.kind != "tensor":
                raise ValueError(f"{name} returned a tensor, but {self.arg} is a {self.kind} of {len(self.shapes)} tensors")
        elif isinstance(out, (list, tuple)):
            got = list(out)
            if self.kind == "tensor":
                raise ValueError(f"{name} returned a {type(out).__name__}, but {self.arg} is a tensor")
            if len(got) != len(self.shapes):
                raise ValueError(f"{name} returned {len(got)} tensors, but {self.arg} has {len(self.shapes)}")
        else:
            raise TypeError(f"{name} must return a tensor or a list of tensors, got {type(out).__name__}")
        for i, (p, s) in enumerate(zip(got, self.user_shapes)):
            where = f"{name}(...)" if self.kind == "tensor" else f"{name}(...)[{i}]"
            ref = self.arg if self.kind == "tensor" else f"{self.arg}[{i}]"
            if not torch.is_tensor(p):
                raise TypeError(f"{where} must be a tensor, got {type(p).__name__}")
            if tuple(p.shape) != s:
                raise ValueError(f"{where} has shape {tuple(p.shape)}, but {ref} has shape {s}")
            if p.dtype != self.dtype:
                raise TypeError(f"{where} has dtype {p.dtype}, but {ref} has dtype {self.dtype}")
            if p.device != self.device:
                raise ValueError(f"{where} is on {p.device}, but {ref} is on {self.device}")
        return [p.reshape(s) for p, s in zip(got, self.shapes)]

    def checked_func(self, func: Callable) -> Callable:
        """Wrap ``func`` as internal parts -> internal parts, validating its first output only
        (shapes/dtypes/devices are metadata: the check costs no device sync)."""
        first = [True]

        def call(parts):
            out = func(self.external(parts))
            if first[0]:
                first[0] = False
                return self.check_output(out)
            parts_out = [out] if torch.is_tensor(out) else list(out)
            return [p.reshape(s) for p, s in zip(parts_out, self.shapes)]

        return call
