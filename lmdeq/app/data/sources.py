"""Resolve a ``--data`` specification into decoded train (and, where one exists, test) images.

Accepted forms:

* ``cifar10``: torchvision's CIFAR-10 under ``<cache_dir>/cifar10-torchvision``, downloaded if missing;
* ``torchvision:<root>``: torchvision's CIFAR-10 under ``root`` (downloaded if missing);
* ``<Name>:<root>``: a torchvision data set already on disk under ``root`` in torchvision's own layout, never
  downloaded: ``CIFAR10``, ``CIFAR100``, ``SVHN``, ``MNIST``, ``FashionMNIST``, ``STL10`` (the name in any case);
  its train and test splits, its classes; a missing one is one line saying where it was looked for and how to
  get it;
* a directory: an ImageFolder (``<class>/<image>``), or one holding ``train/`` (+ ``test/`` or ``val/``);
* a ``.tar.gz`` / ``.tgz`` / ``.tar`` of such a directory, extracted once into the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import DataError, DataNotFoundError, DataUnavailableError
from .archive import extract_archive, is_archive, prepare_cache_dir
from .folder import find_split_dirs, load_image_folder
from .images import LabelledImages

__all__ = ["DataSource", "DataUnavailableError", "load_source", "TORCHVISION_PREFIX", "DOWNLOAD_NAME",
           "TORCHVISION_SETS"]

TORCHVISION_PREFIX = "torchvision:"
DOWNLOAD_NAME = "cifar10"


@dataclass(frozen=True)
class DataSource:
    spec: str
    train: LabelledImages
    test: LabelledImages | None


def _torchvision_cifar10(root: Path, train: bool, what: str = "data") -> LabelledImages:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=True)
    except Exception as err:  # URLError, socket errors, corrupt files: all mean "no usable copy"
        raise DataUnavailableError(
            f"{what}: could not load or download torchvision CIFAR-10 into {root} ({type(err).__name__}: {err}). "
            "Without network access pass --data <ImageFolder directory or .tar.gz of one>.") from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return LabelledImages(images, torch.tensor(ds.targets, dtype=torch.int64), tuple(ds.classes))


# torchvision data sets by name: (how a split is asked for, where the images / labels are, their layout).
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", "train", "data", "targets", "NHWC"),
    "cifar100": ("CIFAR100", "train", "data", "targets", "NHWC"),
    "svhn": ("SVHN", "split", "data", "labels", "NCHW"),
    "mnist": ("MNIST", "train", "data", "targets", "NHW"),
    "fashionmnist": ("FashionMNIST", "train", "data", "targets", "NHW"),
    "stl10": ("STL10", "split", "data", "labels", "NCHW"),
}


def _named_split(key: str, root: Path, train: bool, what: str = "data") -> LabelledImages:
    """One split of the torchvision data set ``key`` (:data:`TORCHVISION_SETS`) under ``root``, never downloaded."""
    import numpy as np
    import torchvision.datasets as tvd

    name, how, data_attr, label_attr, layout = TORCHVISION_SETS[key]
    cls = getattr(tvd, name)
    split = {"train": train} if how == "train" else {"split": "train" if train else "test"}
    try:
        ds = cls(str(root), download=False, **split)
    except Exception as err:   # torchvision: "Dataset not found or corrupted", missing files, bad archives
        raise DataUnavailableError(
            f"{what}: torchvision {name} was not found (or is damaged) under {root} ({type(err).__name__}: {err}); "
            f"lmdeq never downloads it: get it once where there is network with python -c \"import torchvision; "
            + (f"[torchvision.datasets.{name}('{root}', split=s, download=True) for s in ('train', 'test')]"
               if how == "split" else f"torchvision.datasets.{name}('{root}', download=True)")
            + f"\" and pass --{what} {name}:{root}") from err
    images = torch.as_tensor(np.asarray(getattr(ds, data_attr)))
    if images.dtype != torch.uint8:
        raise DataError(f"{what}: torchvision {name} under {root} holds {images.dtype} images, expected uint8")
    images = {"NHWC": lambda t: t.permute(0, 3, 1, 2), "NCHW": lambda t: t,
              "NHW": lambda t: t.unsqueeze(1)}[layout](images).contiguous()
    labels = torch.as_tensor(np.asarray(getattr(ds, label_attr)), dtype=torch.int64)
    classes = tuple(str(c) for c in getattr(ds, "classes", None) or range(int(labels.max()) + 1))
    return LabelledImages(images, labels, classes)


def _named_source(spec: str, what: str = "data") -> DataSource | None:
    """The torchvision data set ``<Name>:<root>`` names, or None when ``spec`` is no such name."""
    name, sep, root = spec.partition(":")
    key = name.lower().replace("-", "").replace("_", "")
    if not sep or key not in TORCHVISION_SETS:
        return None
    if not root:
        raise DataError(f"{what}: {spec} names no root directory; pass --{what} {name}:<root>")
    path = Path(root).expanduser()
    return DataSource(spec, _named_split(key, path, True, what), _named_split(key, path, False, what))


def _folder_source(spec: str, root: Path, cache: Path, workers: int, progress: bool, strict: bool,
                   resize: int | None = None, what: str = "data") -> DataSource:
    train_dir, test_dir = find_split_dirs(root)
    train = load_image_folder(train_dir, cache, workers, progress, strict, resize)
    test = load_image_folder(test_dir, cache, workers, progress, strict, resize) if test_dir is not None else None
    if test is not None and test.classes != train.classes:
        raise DataError(f"{what}: {test_dir} has classes {test.classes}, but {train_dir} has {train.classes}")
    return DataSource(spec, train, test)


def load_source(spec: str, cache_dir: str | os.PathLike | None = None, workers: int = 0,
                progress: bool = False, strict: bool = False, resize: int | None = None,
                what: str = "data") -> DataSource:
    """Decode the data named by ``spec`` (see the module docstring); ``strict``: an undecodable image file
    is an error instead of being skipped and reported; ``resize``: image folders are decoded at resize x resize
    (mixed sizes allowed; other sources keep their size, see :mod:`lmdeq.app.data.fit`); ``what``: the flag the
    specification came from (``data`` or ``val-data``), which every error names."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"{what} must be a non-empty string")
    cache = prepare_cache_dir(cache_dir)
    if spec == DOWNLOAD_NAME or spec.startswith(TORCHVISION_PREFIX):
        if spec == DOWNLOAD_NAME:
            root = cache / "cifar10-torchvision"
        else:
            root = Path(spec[len(TORCHVISION_PREFIX):]).expanduser()
        return DataSource(spec, _torchvision_cifar10(root, True, what), _torchvision_cifar10(root, False, what))
    named = _named_source(spec, what)
    if named is not None:
        return named
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataNotFoundError(
            f"{what}: {spec} does not exist (expected an ImageFolder directory, a .tar.gz of one, "
            f"'{DOWNLOAD_NAME}', '{TORCHVISION_PREFIX}<root>' or <Name>:<root> of a torchvision data set: "
            f"{', '.join(v[0] for v in TORCHVISION_SETS.values())})")
    if path.is_file():
        if not is_archive(path):
            raise DataError(f"{what}: {spec} is a file but not a .tar.gz, .tgz or .tar archive")
        return _folder_source(spec, extract_archive(path, cache), cache, workers, progress, strict, resize, what)
    return _folder_source(spec, path, cache, workers, progress, strict, resize, what)
