"""Decode an ImageFolder directory (``<root>/<class>/<image>``) into :class:`LabelledImages`, once.

The decoded uint8 tensor is cached under ``<cache_dir>/decoded/<key>.pt`` where the key hashes the
directory's path and every image's relative path, size, modification and status-change times and mode, so
editing the folder (or fixing a file's permissions) invalidates the cache. The cache file is written atomically; a cache file that does not load (torn,
altered) is rebuilt, with a warning.

Files that do not decode (truncated, zero bytes, not an image, a floating-point image) are skipped and
reported (a count and the first few paths, every time the data is loaded); with ``strict=True`` the first one
is a DataError naming it. 16-bit images keep their top 8 bits. Which files are images (links, loops, special
files): :mod:`lmdeq.app.data.scan`. Images of another size than the first readable one are an error (the batch needs one size).
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..atomic import atomic_write_bytes, remove_stale_temporaries
from ...errors import DataError, DataNotFoundError
from ..torch_files import load_failure_reason, torch_save_bytes
from .fit import resize_images
from .images import LabelledImages
from .scan import scan_image_folder

SPLIT_TEST_NAMES = ("test", "val")
SHOWN_SKIPS = 5
log = logging.getLogger("lmdeq.app.train")


def find_split_dirs(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """(train_dir, test_dir or None) inside ``root``.

    Single-child wrapper directories (holding only one directory that itself holds directories) are
    descended (an archive of ``train/<class>/...``). A level that holds a ``train`` directory gives the
    train split, and ``test`` (else ``val``) beside it the test split; otherwise the level itself is the
    (train) ImageFolder, possibly of one class.
    """
    d = Path(root)
    if not d.is_dir():
        raise DataNotFoundError(f"data: {d} is not a directory")
    while True:
        entries = [e for e in d.iterdir() if not e.name.startswith(".")]
        subdirs = {e.name: e for e in entries if e.is_dir()}
        if "train" in subdirs:
            test = next((subdirs[n] for n in SPLIT_TEST_NAMES if n in subdirs), None)
            return subdirs["train"], test
        if len(subdirs) == 1 and len(entries) == 1:
            child = next(iter(subdirs.values()))
            if any(e.is_dir() for e in child.iterdir() if not e.name.startswith(".")):
                d = child
                continue
        return d, None


def _read_image(path: str, size: tuple[int, int] | None, resize: int | None = None):
    """(3, H, W) uint8 tensor; or the reason (str) it cannot be decoded; or a DataError (returned, not raised,
    so that it crosses a loader worker intact) for a readable image of another size than ``size``. With
    ``resize`` every image is resized to resize x resize instead (any sizes may then be mixed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if resize is None and size is not None and im.size != size:
                    return DataError(f"data: {path} is {im.size[0]}x{im.size[1]}, expected {size[0]}x{size[1]} like "
                                     "the first image (every image of a data set must have one size; --image-size "
                                     "resizes images of mixed sizes while decoding)")
                arr = _rgb8(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return f"{type(err).__name__}: {err}"
    if isinstance(arr, str):
        return arr
    image = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    return image if resize is None else resize_images(image[None], resize)[0]


def _rgb8(im: Image.Image):
    """(H, W, 3) uint8 of an opened image, or why it has no defined 8-bit value. 16-bit grayscale keeps its top
    8 bits (PIL's ``convert('RGB')`` clips every value above 255 to white); a 32-bit integer image whose values
    fit 16 bits is read as 16-bit; floating-point images are refused (no defined range)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            return f"a {im.mode} image with values outside 0..65535 has no defined 8-bit value"
        gray = (a >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        return "a 32-bit floating-point image has no defined 8-bit value"
    return np.asarray(im.convert("RGB"))


class _DecodeDataset(torch.utils.data.Dataset):
    """Item i: image file i decoded to a (3, H, W) uint8 tensor, or why it cannot be."""

    def __init__(self, paths: list[str], size: tuple[int, int], resize: int | None = None):
        self.paths, self.size, self.resize = paths, size, resize

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return _read_image(self.paths[i], self.size, self.resize)


def _cache_key(root: Path, samples: list[tuple[str, int]], classes: list[str], resize: int | None = None) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode())
    digest.update("\0".join(classes).encode())
    if resize is not None:
        digest.update(f"\0resize={resize}".encode())
    for path, label in samples:
        st = os.stat(path)
        # ctime and mode too: a chmod that makes an unreadable file readable changes neither size nor mtime
        digest.update(f"\0{os.path.relpath(path, root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
                      f"\0{st.st_mode}".encode())
    return digest.hexdigest()[:24]


def _first_size(paths: list[str]) -> tuple[int, int] | None:
    for p in paths:
        got = _read_image(p, None)
        if torch.is_tensor(got):
            return got.shape[2], got.shape[1]
    return None


def _unreadable(path: str, reason: str) -> DataError:
    return DataError(f"data: cannot decode {path} ({reason}); fix or remove it, or drop --strict to skip "
                     "unreadable images")


def _decode(root: Path, samples, workers: int, progress: bool, strict: bool, resize: int | None = None):
    """(images, labels, skipped [(path, reason)]) of ``samples`` (resized to resize x resize when given)."""
    paths = [p for p, _ in samples]
    size = _first_size(paths)
    if size is None:
        raise DataError(f"data: none of the {len(paths)} image files under {root} can be decoded")
    loader = torch.utils.data.DataLoader(_DecodeDataset(paths, size, resize), batch_size=512, num_workers=workers,
                                         collate_fn=list, generator=torch.Generator())
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=f"decoding {root.name}", unit="batch", leave=False)
    images, labels, skipped = [], [], []
    i = 0
    for batch in loader:
        for got in batch:
            path, label = samples[i]
            i += 1
            if isinstance(got, DataError):
                raise got
            if torch.is_tensor(got):
                images.append(got)
                labels.append(label)
            elif strict:
                raise _unreadable(path, got)
            else:
                skipped.append((os.path.relpath(path, root), got))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), skipped


def _report_skipped(root: Path, skipped: list, total: int) -> None:
    if skipped:
        shown = "; ".join(f"{p} ({r})" for p, r in skipped[:SHOWN_SKIPS])
        more = f" and {len(skipped) - SHOWN_SKIPS} more" if len(skipped) > SHOWN_SKIPS else ""
        log.warning("data: skipped %d of %d image files under %s that cannot be decoded: %s%s (--strict fails instead)",
                    len(skipped), total, root, shown, more)


def _load_cache(cache_file: Path):
    """The cached blob, or None (rebuilt) when the file is missing or does not load as one."""
    if not cache_file.is_file():
        return None
    try:
        blob = torch.load(cache_file, weights_only=True)
        images, labels = blob["images"], blob["labels"]
        result = (LabelledImages(images, labels, tuple(blob["classes"])), [tuple(s) for s in blob.get("skipped", [])])
    except Exception as err:  # torn, altered or foreign file: it is only a cache
        log.warning("data: the decoded cache %s does not load (%s); rebuilding it", cache_file,
                    load_failure_reason(err))
        cache_file.unlink(missing_ok=True)
        return None
    return result


def load_image_folder(root: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 0,
                      progress: bool = False, strict: bool = False, resize: int | None = None) -> LabelledImages:
    """All images under ``root`` (one subdirectory per class, sorted names = label order), decoded;
    unreadable files skipped and reported (``strict``: a DataError instead). ``resize``: every image resized to
    resize x resize while decoding (:func:`lmdeq.app.data.fit.resize_images`), so mixed sizes are fine (an
    ImageNet folder); the decoded cache is kept per size."""
    root = Path(root)
    try:
        classes, samples = scan_image_folder(root)
    except FileNotFoundError as err:
        raise DataNotFoundError(
            f"data: {root} is not an ImageFolder directory (<root>/<class>/<image>, one subdirectory per class "
            f"holding {', '.join(IMG_EXTENSIONS[:3])}... files): {err}") from err
    decoded = Path(cache_dir).expanduser() / "decoded"
    cache_file = decoded / f"{_cache_key(root, samples, classes, resize)}.pt"
    cached = _load_cache(cache_file)
    if cached is not None:
        data, skipped = cached
        if skipped and strict:
            raise _unreadable(str(root / skipped[0][0]), skipped[0][1])
        _report_skipped(root, skipped, len(samples))
        return data
    images, labels, skipped = _decode(root, samples, workers, progress, strict, resize)
    try:
        decoded.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(decoded)
        blob = {"images": images, "labels": labels, "classes": list(classes), "skipped": [list(s) for s in skipped]}
        atomic_write_bytes(cache_file, torch_save_bytes(blob), fault="decoded-cache")
    except OSError as err:
        log.warning("data: cannot write the decoded cache %s (%s); decoding again next time", cache_file,
                    err.strerror or err)
    _report_skipped(root, skipped, len(samples))
    return LabelledImages(images, labels, tuple(classes))
