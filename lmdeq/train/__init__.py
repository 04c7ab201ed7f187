"""Training and evaluation of MDEQ classifiers on CIFAR-10 (``lmdeq train`` / ``lmdeq eval``).

Files, bottom up: ``archive`` (safe extract-once of .tar.gz), ``folder`` (ImageFolder -> cached uint8
tensor), ``sources`` (``--data`` specs), ``split`` (stratified hold-out / subsets), ``data`` (a run's
train/validation images), ``augment`` + ``batches`` (seeded per-epoch batches), ``optim`` (Adam +
per-step cosine), ``hooks`` (optional model hooks), ``evaluate``, ``metrics`` (JSONL),
``checkpoint`` (atomic, RNG state), ``trainer`` (the loop), ``run`` (entry points), ``cli``.
"""
from .config import TrainConfig
from .evaluate import evaluate
from .images import LabelledImages
from .run import run_evaluation, run_training
from .sources import load_source
from .trainer import Trainer

__all__ = ["LabelledImages", "TrainConfig", "Trainer", "evaluate", "load_source", "run_evaluation", "run_training"]
