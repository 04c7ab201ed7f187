"""The images a run trains and validates on, as a function of its data settings (:class:`DataSpec`: the
fields of :class:`lmdeq.app.train.TrainConfig` that choose the images).

Validation images, in order of preference: ``val_data`` (its test split if it has one, else all of
it); the test split of ``data`` (torchvision CIFAR-10, or a ``test``/``val`` directory beside
``train``); else a stratified hold-out of ``val_fraction`` of the training images (none when 0),
drawn by seed. ``limit_train`` / ``limit_val`` then take stratified subsets, also by seed; ``channels`` /
``image_size`` then fit the images to a model's input (:mod:`lmdeq.app.data.fit`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Protocol

from ...errors import ConfigError, DataError
from .fit import fit_images
from .images import LabelledImages
from .sources import load_source
from .split import stratified_holdout, stratified_subset


class DataSpec(Protocol):
    """What :func:`prepare_splits` reads of a run's configuration."""

    data: Optional[str]
    val_data: Optional[str]
    val_fraction: float
    limit_train: Optional[int]
    limit_val: Optional[int]
    seed: int
    channels: Optional[int]
    image_size: Optional[int]


@dataclass(frozen=True)
class Splits:
    train: LabelledImages
    val: LabelledImages | None
    val_name: str | None  # 'val-data', 'test', 'holdout' or None

    def describe(self) -> str:
        val = f"{len(self.val)} validation ({self.val_name})" if self.val is not None else "no validation"
        return f"{len(self.train)} training / {val} images, {len(self.train.classes)} classes"


def _limit(data: LabelledImages, n: int | None, seed: int, tag: str) -> LabelledImages:
    if n is None or n >= len(data):
        return data
    return data.subset(stratified_subset(data.labels, len(data.classes), n, seed, tag))


def prepare_splits(cfg: DataSpec, cache_dir: str | os.PathLike | None = None, workers: int = 0,
                   progress: bool = False, strict: bool = False, min_classes: int = 1) -> Splits:
    """The run's train / validation images (see the module docstring); DataError if the training data has
    fewer than ``min_classes`` classes (a classifier needs 2)."""
    if cfg.data is None:
        raise ConfigError("data: no training data given (an ImageFolder directory, a .tar.gz of one, "
                         "'cifar10' or 'torchvision:<root>')")
    source = load_source(cfg.data, cache_dir, workers, progress, strict, cfg.image_size)
    train, val, val_name = source.train, None, None
    if len(train.classes) < min_classes:
        raise DataError(f"data: {cfg.data} has {len(train.classes)} class ({', '.join(map(repr, train.classes))}); a "
                        f"classifier needs an ImageFolder with one subdirectory per class, at least {min_classes} "
                        "(e.g. train/<class>/*.png for CIFAR-10's 10 classes)")
    if cfg.val_data is not None:
        other = load_source(cfg.val_data, cache_dir, workers, progress, strict, cfg.image_size, what="val-data")
        val, val_name = (other.test if other.test is not None else other.train), "val-data"
    elif source.test is not None:
        val, val_name = source.test, "test"
    elif cfg.val_fraction > 0:
        train_idx, val_idx = stratified_holdout(train.labels, len(train.classes), cfg.val_fraction, cfg.seed)
        train, val, val_name = train.subset(train_idx), train.subset(val_idx), "holdout"
    if val is not None and val.classes != train.classes:
        raise DataError(f"val_data: classes {val.classes} differ from the training classes {train.classes}")
    train = fit_images(_limit(train, cfg.limit_train, cfg.seed, "train"), cfg.channels, cfg.image_size, cfg.data)
    if val is not None:
        val = fit_images(_limit(val, cfg.limit_val, cfg.seed, "val"), cfg.channels, cfg.image_size, cfg.data)
    return Splits(train, val, val_name)
