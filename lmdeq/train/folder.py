"""Decode an ImageFolder directory (``<root>/<class>/<image>``) into :class:`LabelledImages`, once.

The decoded uint8 tensor is cached under ``<cache_dir>/decoded/<key>.pt`` where the key hashes the
directory's path and every image's relative path, size and modification time, so editing the folder
invalidates the cache. The cache file is written atomically (temporary file + rename).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .images import LabelledImages

SPLIT_TEST_NAMES = ("test", "val")


def find_split_dirs(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """(train_dir, test_dir or None) inside ``root``.

    Single-child wrapper directories are descended (an archive of ``train/<class>/...``). A level that
    holds a ``train`` directory gives the train split, and ``test`` (else ``val``) beside it the test
    split; otherwise the level itself is the (train) ImageFolder.
    """
    d = Path(root)
    if not d.is_dir():
        raise FileNotFoundError(f"data: {d} is not a directory")
    while True:
        entries = [e for e in d.iterdir() if not e.name.startswith(".")]
        subdirs = {e.name: e for e in entries if e.is_dir()}
        if "train" in subdirs:
            test = next((subdirs[n] for n in SPLIT_TEST_NAMES if n in subdirs), None)
            return subdirs["train"], test
        if len(subdirs) == 1 and len(entries) == 1:
            d = next(iter(subdirs.values()))
            continue
        return d, None


class _DecodeDataset(torch.utils.data.Dataset):
    """Each item: one image file decoded to a (3, H, W) uint8 tensor; every image must be HxW."""

    def __init__(self, paths: list[str], size: tuple[int, int]):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            if im.size != self.size:
                raise ValueError(f"data: {self.paths[i]} is {im.size[0]}x{im.size[1]}, expected "
                                 f"{self.size[0]}x{self.size[1]} like the first image")
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _cache_key(root: Path, samples: list[tuple[str, int]], classes: list[str]) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode())
    digest.update("\0".join(classes).encode())
    for path, label in samples:
        st = os.stat(path)
        digest.update(f"\0{os.path.relpath(path, root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _decode(samples, workers: int, progress: bool, desc: str) -> torch.Tensor:
    paths = [p for p, _ in samples]
    with Image.open(paths[0]) as first:
        size = first.size
    loader = torch.utils.data.DataLoader(_DecodeDataset(paths, size), batch_size=512, num_workers=workers,
                                         generator=torch.Generator())
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, unit="batch", leave=False)
    return torch.cat(list(loader))


def load_image_folder(root: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 0,
                      progress: bool = False) -> LabelledImages:
    """All images under ``root`` (one subdirectory per class, sorted names = label order), decoded."""
    root = Path(root)
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"data: {root} is not an ImageFolder directory (<root>/<class>/<image>): {err}") from err
    cache_file = Path(cache_dir).expanduser() / "decoded" / f"{_cache_key(root, samples, classes)}.pt"
    if cache_file.is_file():
        blob = torch.load(cache_file, weights_only=True)
        return LabelledImages(blob["images"], blob["labels"], tuple(blob["classes"]))
    images = _decode(samples, workers, progress, desc=f"decoding {root.name}")
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    torch.save({"images": images, "labels": labels, "classes": list(classes)}, tmp)
    os.replace(tmp, cache_file)
    return LabelledImages(images, labels, tuple(classes))
