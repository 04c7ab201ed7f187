"""Training and evaluation of MDEQ classifiers on CIFAR-10 (``lmdeq train`` / ``lmdeq eval``).

Files, bottom up: ``faults`` (named kill points for the crash tests), ``atomic`` (crash-safe file
replacement), ``archive`` (safe, size-capped extract-once of .tar.gz), ``folder`` (ImageFolder -> cached
uint8 tensor), ``sources`` (``--data`` specs), ``split`` (stratified hold-out / subsets), ``data`` (a run's
train/validation images), ``augment`` + ``batches`` (seeded per-epoch batches), ``optim`` (Adam +
per-step cosine cycles), ``hooks`` (optional model hooks), ``model`` (build and check the model, load
weights), ``evaluate``, ``metrics`` (JSONL), ``checkpoint`` (safe loads, RNG state), ``rundir`` (the run
directory: lock, epoch-end commit, repair after a crash), ``trainer`` (the loop), ``run`` (entry points),
``cli``; for data-parallel runs under torchrun, ``distributed`` (process group, rank devices, collectives that
fail together) and ``replicas`` (DDP wrapping, SyncBatchNorm, identical model state on every rank).
User-facing errors are the classes of :mod:`lmdeq.errors`.
"""
from .config import TrainConfig
from .evaluate import evaluate
from .images import LabelledImages
from .run import run_evaluation, run_training
from .sources import load_source
from .trainer import Trainer

__all__ = ["LabelledImages", "TrainConfig", "Trainer", "evaluate", "load_source", "run_evaluation", "run_training"]
