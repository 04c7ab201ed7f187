"""Mini-batches for training (shuffled, augmented) and evaluation (in order, unaugmented).

An epoch's whole plan (sample order, crop offsets, flips) is drawn up front from a generator seeded by
``derive_seed(seed, "epoch", epoch)``: the batches depend on nothing but (data, seed, epoch, batch
size), not on the number of loader workers or on the global RNG, so a resumed run sees exactly the
batches an uninterrupted run would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .augment import crop_flip
from .images import LabelledImages
from .split import derive_seed


@dataclass(frozen=True)
class EpochPlan:
    order: torch.Tensor  # (N,) sample index for every position of the epoch
    offsets: torch.Tensor | None  # (N, 2) crop offsets by position, None: no augmentation
    flips: torch.Tensor | None  # (N,) bool by position


def epoch_plan(n: int, seed: int, epoch: int, augment: bool, padding: int) -> EpochPlan:
    gen = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    order = torch.randperm(n, generator=gen)
    if not augment:
        return EpochPlan(order, None, None)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen)
    flips = torch.randint(0, 2, (n,), generator=gen).bool()
    return EpochPlan(order, offsets, flips)


class _PlannedBatches(torch.utils.data.Dataset):
    """Item k: the k-th batch (uint8 images, labels) of the plan (or of the data in order)."""

    def __init__(self, data: LabelledImages, batch_size: int, plan: EpochPlan | None, padding: int):
        self.data, self.batch_size, self.plan, self.padding = data, batch_size, plan, padding

    def __len__(self):
        return math.ceil(len(self.data) / self.batch_size)

    def __getitem__(self, k):
        lo, hi = k * self.batch_size, min((k + 1) * self.batch_size, len(self.data))
        if self.plan is None:
            return self.data.images[lo:hi], self.data.labels[lo:hi]
        idx = self.plan.order[lo:hi]
        images = self.data.images[idx]
        if self.plan.offsets is not None:
            images = crop_flip(images, self.plan.offsets[lo:hi], self.plan.flips[lo:hi], self.padding)
        return images, self.data.labels[idx]


def _check(data: LabelledImages, batch_size: int, workers: int):
    if not isinstance(data, LabelledImages):
        raise TypeError(f"data must be LabelledImages, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")


def _loader(batches: _PlannedBatches, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    # A private generator: creating the loader's iterator must not consume the global RNG.
    return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       generator=torch.Generator())


def train_batches(data: LabelledImages, batch_size: int, seed: int, epoch: int, augment: bool = True,
                  padding: int = 4, workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Shuffled (and, with ``augment``, randomly cropped and flipped) batches of epoch ``epoch``."""
    _check(data, batch_size, workers)
    plan = epoch_plan(len(data), seed, epoch, augment, padding)
    return _loader(_PlannedBatches(data, batch_size, plan, padding), workers, pin_memory)


def eval_batches(data: LabelledImages, batch_size: int, workers: int = 0,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The data in stored order, unaugmented."""
    _check(data, batch_size, workers)
    return _loader(_PlannedBatches(data, batch_size, None, 0), workers, pin_memory)
