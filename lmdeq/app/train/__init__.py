"""Training and evaluation of MDEQ classifiers on CIFAR-10 (``lmdeq train`` / ``lmdeq eval``).

The images and their batches come from :mod:`lmdeq.app.data`; files are replaced through :mod:`lmdeq.app.atomic`
(crash-safe) and the crash tests' kill points are :mod:`lmdeq.app.faults`. Files here: ``config`` (the run's
settings), ``optim`` (Adam + per-step cosine cycles), ``hooks`` (optional model hooks), ``model`` (build and check
the model, load weights), ``step`` (one optimiser step), ``jacobian`` (the per-step decision of Jacobian-regularised
training), ``evaluate``, ``metrics`` (JSONL), ``loggers`` (``--log`` csv / tensorboard / wandb), ``checkpoint`` (safe
loads, RNG state), ``rundir`` (the run directory: lock, epoch-end and step commits, repair after a crash), ``trainer``
(the loop), ``run`` (entry points), ``export`` (a run's best weights as a small file), ``arguments`` (the flags),
``config_file`` (``--config`` files and the run's config.json), ``cli``; for data-parallel runs under torchrun,
``distributed`` (process group, rank devices, collectives that fail together) and ``replicas`` (DDP wrapping,
SyncBatchNorm, identical model state on every rank). Images and data sources (``LabelledImages``, ``load_source``) are imported from :mod:`lmdeq.app.data`.
User-facing errors are the classes of :mod:`lmdeq.errors`.
"""
from .config import TrainConfig
from .evaluate import evaluate
from .run import run_evaluation, run_training
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "evaluate", "run_evaluation", "run_training"]
