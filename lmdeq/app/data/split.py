"""Deterministic, stratified index selection: a validation hold-out and size-limited subsets.

Every selection is a pure function of (labels, seed, tag): a per-class random permutation from a
``torch.Generator`` seeded with :func:`derive_seed`, so runs and resumed runs agree exactly.
"""
from __future__ import annotations

import hashlib
import math

import torch

from ...errors import ConfigError


def derive_seed(seed: int, *tags) -> int:
    """A 63-bit seed for the stream named by ``tags`` (independent streams from one user seed)."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(tags)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _class_permutations(labels: torch.Tensor, num_classes: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        out.append(idx[torch.randperm(idx.numel(), generator=gen)])
    return out


def _quotas(sizes: list[int], n: int) -> list[int]:
    """Split n over classes of the given sizes in proportion (largest remainder, ties to the lower class)."""
    total = sum(sizes)
    exact = [n * s / total for s in sizes]
    quota = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda c: (quota[c] - exact[c], c))
    for c in by_remainder[: n - sum(quota)]:
        quota[c] += 1
    return quota


def stratified_holdout(labels: torch.Tensor, num_classes: int, fraction: float,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), sorted: round(fraction * N) images held out, split over the classes in
    proportion to their sizes."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"val_fraction must lie strictly between 0 and 1, got {fraction!r}")
    perms = _class_permutations(labels, num_classes, derive_seed(seed, "holdout"))
    n_val = int(round(fraction * labels.numel()))
    if n_val == 0 or n_val == labels.numel():
        raise ConfigError(f"val_fraction={fraction} of {labels.numel()} images leaves an empty "
                         f"{'validation' if n_val == 0 else 'training'} split")
    quota = _quotas([p.numel() for p in perms], n_val)
    val_idx = torch.cat([p[:q] for p, q in zip(perms, quota)]).sort().values
    train_idx = torch.cat([p[q:] for p, q in zip(perms, quota)]).sort().values
    return train_idx, val_idx


def stratified_subset(labels: torch.Tensor, num_classes: int, n: int, seed: int, tag: str) -> torch.Tensor:
    """``min(n, N)`` sorted indices with class proportions kept (largest-remainder rounding)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"limit must be an int, got {type(n).__name__}")
    if n < 1:
        raise ConfigError(f"limit must be >= 1, got {n}")
    if n >= labels.numel():
        return torch.arange(labels.numel())
    perms = _class_permutations(labels, num_classes, derive_seed(seed, "subset", tag))
    quota = _quotas([p.numel() for p in perms], n)
    return torch.cat([p[:q] for p, q in zip(perms, quota)]).sort().values
