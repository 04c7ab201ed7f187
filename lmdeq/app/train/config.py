"""Training configuration: everything that determines a run's numbers, saved in every checkpoint.

Defaults are the Lipschitz-MDEQ authors' CIFAR-10 settings: Adam, lr 1e-3 decayed per step by a
cosine to 1e-6, batch 128, no weight decay, random crop (padding 4) + horizontal flip.
``lr_restarts`` lists the epoch counts after which the cosine starts a new cycle: a run planned for E
epochs and later extended to E' > E (``lmdeq train --resume ... --epochs E'``) gets ``lr_restarts = [E]``,
so its first E epochs keep their schedule and the added ones run a fresh cosine from lr to min_lr.
``amp``: 'off' (fp32 throughout) or 'bf16' (the training forward pass under bf16 autocast, see
:mod:`lmdeq.app.train.step`); a checkpoint written before this setting existed has none and means 'off'.
Runtime choices that do not change the numbers on a given device (device, workers, output
directory, progress display, loggers, checkpoint cadence) are not part of it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ... import checks
from ...errors import ConfigError, ConfigTypeError

# Keys that may differ when a run is resumed: they do not change the training trajectory.
RESUME_MAY_CHANGE = frozenset({"data", "val_data", "eval_batch_size"})
AMP_MODES = ("off", "bf16")


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
    channels: int | None = None     # convert the images to this many channels (1 or 3; lmdeq.app.data.fit)
    image_size: int | None = None   # resize the images to image_size x image_size (lmdeq.app.data.fit)
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
    amp: str = "off"  # 'bf16': the training forward pass under bf16 autocast (AMP_MODES)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """ConfigTypeError (a TypeError) / ConfigError (a ValueError) naming the offending field (lmdeq.checks);
        each number is stored back as the plain Python type its check returns (an int, a float)."""
        if not isinstance(self.preset, str) or not self.preset:
            raise ConfigTypeError(f"preset must be a non-empty string, got {self.preset!r}")
        checks.boolean("lipschitz", self.lipschitz)
        if not isinstance(self.model_overrides, dict) or not all(isinstance(k, str) for k in self.model_overrides):
            raise ConfigTypeError("model_overrides must be a dict with string keys")
        for name in ("data", "val_data"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigTypeError(f"{name} must be a string or None, got {type(getattr(self, name)).__name__}")
        self.val_fraction = checks.number("val_fraction", self.val_fraction, 0, 1, high_open=True)
        for name in ("limit_train", "limit_val", "image_size"):
            if getattr(self, name) is not None:
                setattr(self, name, checks.integer(name, getattr(self, name), 1))
        if self.channels is not None:
            self.channels = checks.choice("channels", checks.integer("channels", self.channels, 1), (1, 3))
        for name in ("epochs", "batch_size", "eval_batch_size"):
            setattr(self, name, checks.integer(name, getattr(self, name), 1))
        self.lr = checks.number("lr", self.lr, 0, low_open=True)
        for name in ("min_lr", "weight_decay", "grad_clip"):
            setattr(self, name, checks.number(name, getattr(self, name), 0))
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        checks.boolean("augment", self.augment)
        self.seed = checks.integer("seed", self.seed, 0)
        r = self.lr_restarts
        if not isinstance(r, (list, tuple)):
            raise ConfigTypeError(f"lr_restarts must be a list of ints, got {type(r).__name__}")
        r = [checks.integer(f"lr_restarts[{i}]", e) for i, e in enumerate(r)]
        if any(not 0 < e < self.epochs for e in r) or r != sorted(set(r)):
            raise ConfigError(f"lr_restarts={r} must increase strictly and lie in [1, epochs={self.epochs})")
        self.lr_restarts = r
        self.amp = checks.choice("amp", self.amp, AMP_MODES)

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
