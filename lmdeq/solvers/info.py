"""What a solve reports: ``info``, a dict whose values are all floating-point tensors.

Every value is a tensor so that generic consumers work unchanged: a logger that does
``{k: v.mean().item() for k, v in info.items()}``, ``torch.nn.parallel.gather`` (DataParallel), which
concatenates each value along dim 0, and a CUDA-graph replay, which can only replay tensors. Shapes are
(B,) for per-sample values, (B, N) for traces and (1,) for per-solve values, so a merge of the infos of
two batches (or two replicas) concatenates each value along dim 0 into the same layout.

Outcome codes (``info['result']``, float so that ``.mean()`` works; ordered by severity, so the
worst of several merged solves is the maximum):

    0 converged   every sample's lowest residual is below tol
    1 max_iter    ran out of iterations with finite residuals
    2 diverged    some sample's last residual is more than 1e4 times its first
    3 nonfinite   some sample's residual was NaN/Inf (bad x0, or f produced NaN/Inf)

The codes are computed on the device; nothing is read back unless asked (``info.result``,
:func:`result_of`, ``raise_on_failure=True``).
"""
from __future__ import annotations

import enum
from typing import Mapping

import torch

__all__ = ["Result", "SolverError", "SolverInfo", "result_of"]


class Result(str, enum.Enum):
    """Outcome of a solve; ``Result.CONVERGED == 'converged'``."""

    CONVERGED = "converged"
    MAX_ITER = "max_iter"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"

    def __str__(self):
        return self.value

    @property
    def code(self) -> int:
        """The numeric code stored in ``info['result']``."""
        return _ORDER.index(self)

    @classmethod
    def from_code(cls, code) -> "Result":
        """The outcome named by a code (a number, or a code tensor: the worst entry counts)."""
        value = int(code.max()) if torch.is_tensor(code) else int(code)
        if not 0 <= value < len(_ORDER):
            raise ValueError(f"code must be one of 0..{len(_ORDER) - 1}, got {value}")
        return _ORDER[value]


_ORDER = (Result.CONVERGED, Result.MAX_ITER, Result.DIVERGED, Result.NONFINITE)


class SolverError(RuntimeError):
    """Raised when ``raise_on_failure=True`` and a solve did not converge."""


class SolverInfo(dict):
    """A solver's info dict (all values tensors) with typed views of lmdeq's extra fields.

    ``info.result`` (a :class:`Result`), ``info.converged`` (a (B,) bool mask) and ``info.f_evals`` (an
    int) read ``info['result']``, ``info['converged']`` and ``info['f_evals']``; reading them syncs with
    the device. Under TorchDEQ's solver names the items are exactly TorchDEQ's six keys, and these
    fields live in ``info.extras`` instead (a dict rebuilt from the items alone, e.g. by
    ``torch.nn.parallel.gather``, no longer has them).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extras = {}

    def field(self, key: str) -> torch.Tensor:
        """The tensor ``key`` from the items, else from :attr:`extras`."""
        if key in self:
            return self[key]
        if key in self.extras:
            return self.extras[key]
        raise KeyError(f"this info has no {key!r}: under TorchDEQ's solver names it is in info.extras, "
                       "which a dict rebuilt from the items alone (e.g. by torch.nn.parallel.gather) does not keep")

    @property
    def result(self) -> Result:
        return Result.from_code(self.field("result"))

    @property
    def converged(self) -> torch.Tensor:
        return self.field("converged") > 0.5

    @property
    def f_evals(self) -> int:
        return int(self.field("f_evals").max())


def result_of(info: Mapping) -> Result:
    """The outcome recorded in any info mapping (a :class:`SolverInfo`, a plain copy of one, or a merge of
    several along dim 0: the worst counts)."""
    if isinstance(info, SolverInfo):
        return info.result
    if "result" not in info:
        raise KeyError("info has no 'result' (a TorchDEQ-layout info keeps it in SolverInfo.extras)")
    return Result.from_code(info["result"])
