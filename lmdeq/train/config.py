"""Training configuration: everything that determines a run's numbers, saved in every checkpoint.

Defaults are the Lipschitz-MDEQ authors' CIFAR-10 settings: Adam, lr 1e-3 decayed per step by a
cosine to 1e-6, batch 128, no weight decay, random crop (padding 4) + horizontal flip.
``lr_restarts`` lists the epoch counts after which the cosine starts a new cycle: a run planned for E
epochs and later extended to E' > E (``lmdeq train --resume ... --epochs E'``) gets ``lr_restarts = [E]``,
so its first E epochs keep their schedule and the added ones run a fresh cosine from lr to min_lr.
Runtime choices that do not change the numbers on a given device (device, workers, output
directory, progress display) are not part of it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import ConfigError, ConfigTypeError

# Keys that may differ when a run is resumed: they do not change the training trajectory.
RESUME_MAY_CHANGE = frozenset({"data", "val_data", "eval_batch_size"})


@dataclass
class TrainConfig:
    preset: str = "cifar10-small"
    lipschitz: bool = True
    model_overrides: dict = field(default_factory=dict)
    data: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.1  # held out of the training images when no test split exists; 0: none
    limit_train: int | None = None
    limit_val: int | None = None
    epochs: int = 50
    batch_size: int = 128
    eval_batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0: no clipping
    augment: bool = True
    seed: int = 0
    lr_restarts: list = field(default_factory=list)  # epochs after which the cosine restarts (extended runs)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """ConfigTypeError (a TypeError) / ConfigError (a ValueError) naming the offending field."""
        def _int(name, lo, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigTypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")

        def _float(name, lo, hi=math.inf, lo_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigTypeError(f"{name} must be a number, got {type(v).__name__}")
            if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v >= hi:
                raise ConfigError(f"{name}={v} is out of range")

        if not isinstance(self.preset, str) or not self.preset:
            raise ConfigTypeError("preset must be a non-empty string")
        if not isinstance(self.lipschitz, bool):
            raise ConfigTypeError("lipschitz must be a bool")
        if not isinstance(self.model_overrides, dict) or not all(isinstance(k, str) for k in self.model_overrides):
            raise ConfigTypeError("model_overrides must be a dict with string keys")
        for name in ("data", "val_data"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigTypeError(f"{name} must be a string or None")
        _float("val_fraction", 0.0, 1.0)
        _int("limit_train", 1, optional=True)
        _int("limit_val", 1, optional=True)
        _int("epochs", 1)
        _int("batch_size", 1)
        _int("eval_batch_size", 1)
        _float("lr", 0.0, lo_open=True)
        _float("min_lr", 0.0)
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        _float("weight_decay", 0.0)
        _float("grad_clip", 0.0)
        if not isinstance(self.augment, bool):
            raise ConfigTypeError("augment must be a bool")
        _int("seed", 0)
        r = self.lr_restarts
        if not isinstance(r, (list, tuple)) or any(isinstance(e, bool) or not isinstance(e, int) for e in r):
            raise ConfigTypeError("lr_restarts must be a list of ints")
        if any(not 0 < e < self.epochs for e in r) or list(r) != sorted(set(r)):
            raise ConfigError(f"lr_restarts={list(r)} must increase strictly and lie in [1, epochs={self.epochs})")
        self.lr_restarts = list(r)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})
