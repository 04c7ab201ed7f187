"""Images for training and evaluation: from a ``--data`` spec to seeded, augmented mini-batches.

Files, bottom up: ``archive`` (safe, size-capped extract-once of .tar.gz), ``images`` (uint8 images with
labels and class names), ``folder`` (ImageFolder -> cached uint8 tensor), ``sources`` (``--data`` specs:
a directory, an archive, torchvision's CIFAR-10), ``split`` (stratified hold-out / subsets by seed),
``run_data`` (a run's train / validation images from its data settings), ``augment`` + ``batches``
(per-epoch plans seeded by (seed, epoch), sharded across data-parallel ranks). Files are written through
:mod:`lmdeq.app.atomic`; errors are the data classes of :mod:`lmdeq.errors`. Nothing here imports the
training package: the benchmarks and ``lmdeq.app.train`` both build on it.
"""
from .batches import eval_batches, shard_bounds, train_batches
from .images import LabelledImages
from .run_data import Splits, prepare_splits
from .sources import DataSource, load_source

__all__ = ["DataSource", "LabelledImages", "Splits", "eval_batches", "load_source", "prepare_splits",
           "shard_bounds", "train_batches"]
