"""Mini-batches for training (shuffled, augmented) and evaluation (in order, unaugmented).

An epoch's whole plan (sample order, crop offsets, flips) is drawn up front from a generator seeded by
``derive_seed(seed, "epoch", epoch)``: the batches depend on nothing but (data, seed, epoch, batch
size), not on the number of loader workers or on the global RNG, so a resumed run sees exactly the
batches an uninterrupted run would.

In a data-parallel run every rank draws the same plan and takes its shard of each global batch
(``shard=(rank, world)``: the contiguous positions :func:`shard_bounds` gives it),
so the union of the ranks' shards is exactly the batch a single process trains on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import ConfigError
from .augment import crop_flip
from .images import LabelledImages
from .split import derive_seed


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank``'s share of n items split into ``world`` contiguous shards whose sizes
    differ by at most one, the first ``n % world`` shards one larger (``torch.tensor_split``'s rule)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


@dataclass(frozen=True)
class EpochPlan:
    order: torch.Tensor  # (N,) sample index for every position of the epoch
    offsets: torch.Tensor | None  # (N, 2) crop offsets by position, None: no augmentation
    flips: torch.Tensor | None  # (N,) bool by position


def epoch_plan(n: int, seed: int, epoch: int, augment: bool, padding: int, flip: bool = True) -> EpochPlan:
    """The epoch's order, crop offsets and flips (drawn in that order, also when ``flip`` is False, which then
    clears them: the crops of a run do not depend on whether it flips)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    order = torch.randperm(n, generator=gen)
    if not augment:
        return EpochPlan(order, None, None)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen)
    flips = torch.randint(0, 2, (n,), generator=gen).bool()
    return EpochPlan(order, offsets, flips if flip else torch.zeros_like(flips))


class _PlannedBatches(torch.utils.data.Dataset):
    """Item k: the k-th batch (uint8 images, labels) of the plan (or of the data in order), or this rank's
    shard of it."""

    def __init__(self, data: LabelledImages, batch_size: int, plan: EpochPlan | None, padding: int,
                 shard: tuple[int, int] = (0, 1)):
        self.data, self.batch_size, self.plan, self.padding, self.shard = data, batch_size, plan, padding, shard

    def __len__(self):
        return math.ceil(len(self.data) / self.batch_size)

    def __getitem__(self, k):
        lo, hi = k * self.batch_size, min((k + 1) * self.batch_size, len(self.data))
        a, b = shard_bounds(hi - lo, *self.shard)
        lo, hi = lo + a, lo + b
        if self.plan is None:
            return self.data.images[lo:hi], self.data.labels[lo:hi]
        idx = self.plan.order[lo:hi]
        images = self.data.images[idx]
        if self.plan.offsets is not None:
            images = crop_flip(images, self.plan.offsets[lo:hi], self.plan.flips[lo:hi], self.padding)
        return images, self.data.labels[idx]


def _check(data: LabelledImages, batch_size: int, workers: int, shard=(0, 1)):
    if not isinstance(data, LabelledImages):
        raise TypeError(f"data must be LabelledImages, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    rank, world = shard
    if isinstance(world, bool) or not isinstance(world, int) or world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")


def _loader(batches: _PlannedBatches, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    # A private generator: creating the loader's iterator must not consume the global RNG.
    return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       generator=torch.Generator())


def train_batches(data: LabelledImages, batch_size: int, seed: int, epoch: int, augment: bool = True,
                  padding: int = 4, workers: int = 0, pin_memory: bool = False,
                  shard: tuple[int, int] = (0, 1), flip: bool = True) -> torch.utils.data.DataLoader:
    """Shuffled (and, with ``augment``, randomly cropped and, with ``flip``, flipped) batches of epoch ``epoch``;
    with ``shard=(rank, world)`` only that rank's share of each batch (see the module docstring)."""
    _check(data, batch_size, workers, shard)
    plan = epoch_plan(len(data), seed, epoch, augment, padding, flip)
    return _loader(_PlannedBatches(data, batch_size, plan, padding, shard), workers, pin_memory)


def eval_batches(data: LabelledImages, batch_size: int, workers: int = 0,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The data in stored order, unaugmented."""
    _check(data, batch_size, workers)
    return _loader(_PlannedBatches(data, batch_size, None, 0), workers, pin_memory)


def check_shardable(n: int, batch_size: int, world: int) -> None:
    """ConfigError unless every global batch of an epoch over ``n`` images gives each of ``world`` ranks at
    least one image (the last batch holds ``n mod batch_size`` images when that is not 0); it names batch
    sizes that work."""
    def smallest(b):
        return min(b, n) if n % b == 0 or n < b else n % b

    if world <= 1 or smallest(batch_size) >= world:
        return
    last = smallest(batch_size)
    near = [b for b in range(max(world, batch_size - 64), batch_size + 65) if smallest(b) >= world]
    hint = ""
    if near:
        below = [b for b in near if b < batch_size]
        above = [b for b in near if b > batch_size]
        picks = ([below[-1]] if below else []) + ([above[0]] if above else [])
        hint = f" (e.g. --batch-size {' or '.join(map(str, picks))})"
    raise ConfigError(f"batch_size: {world} processes split every global batch into {world} shards, but with {n} "
                      f"training images and --batch-size {batch_size} a batch of the epoch holds only {last} image(s); "
                      f"choose a batch size for which every batch has at least {world} images{hint}, or change "
                      "--limit-train")
