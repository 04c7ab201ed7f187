"""Training configuration: everything that determines a run's numbers, saved in every checkpoint.

Defaults are the Lipschitz-MDEQ authors' CIFAR-10 settings: Adam, lr 1e-3 decayed per step by a
cosine to 1e-6, batch 128, no weight decay, random crop (padding 4) + horizontal flip.
Runtime choices that do not change the numbers on a given device (device, workers, output
directory, progress display) are not part of it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

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

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """TypeError / ValueError naming the offending field."""
        def _int(name, lo, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")

        def _float(name, lo, hi=math.inf, lo_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(v).__name__}")
            if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v >= hi:
                raise ValueError(f"{name}={v} is out of range")

        if not isinstance(self.preset, str) or not self.preset:
            raise TypeError("preset must be a non-empty string")
        if not isinstance(self.lipschitz, bool):
            raise TypeError("lipschitz must be a bool")
        if not isinstance(self.model_overrides, dict) or not all(isinstance(k, str) for k in self.model_overrides):
            raise TypeError("model_overrides must be a dict with string keys")
        for name in ("data", "val_data"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string or None")
        _float("val_fraction", 0.0, 1.0)
        _int("limit_train", 1, optional=True)
        _int("limit_val", 1, optional=True)
        _int("epochs", 1)
        _int("batch_size", 1)
        _int("eval_batch_size", 1)
        _float("lr", 0.0, lo_open=True)
        _float("min_lr", 0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        _float("weight_decay", 0.0)
        _float("grad_clip", 0.0)
        if not isinstance(self.augment, bool):
            raise TypeError("augment must be a bool")
        _int("seed", 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})
