"""Use lmdeq's solvers inside TorchDEQ (optional dependency ``torchdeq==0.1.0``).

    from lmdeq.integrations import torchdeq as lmdeq_torchdeq
    lmdeq_torchdeq.register()
    deq = torchdeq.get_deq(f_solver="lmdeq_anderson", b_solver="lmdeq_fixed_point", ift=True)

Our solvers already follow TorchDEQ's contract (tensor or list ``x0``; ``func`` with or without ``tau``;
unknown kwargs ignored), so registration maps names to the functions themselves.
"""
from __future__ import annotations

from ..solvers import SOLVERS

__all__ = ["register", "NAMES"]

NAMES = {f"lmdeq_{name}": fn for name, fn in SOLVERS.items()}


def register() -> list:
    """Register ``lmdeq_fixed_point``, ``lmdeq_anderson`` and ``lmdeq_broyden`` in TorchDEQ's solver
    registry; returns the names. Raises ImportError with install advice when TorchDEQ is missing."""
    try:
        from torchdeq.solver import register_solver
    except ImportError as exc:  # pragma: no cover - exercised only without torchdeq
        raise ImportError("lmdeq.integrations.torchdeq needs TorchDEQ: pip install 'torchdeq==0.1.0'") from exc
    for name, fn in NAMES.items():
        register_solver(name, fn)
    return sorted(NAMES)
