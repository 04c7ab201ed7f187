"""The image files of an ImageFolder (``<root>/<class>/.../<image>``), found safely.

torchvision's ``make_dataset`` walks with ``followlinks=True`` and takes every name with an image extension,
so a symlink loop inside a class directory is followed ~40 levels deep (every image repeated, the copies landing
in both the training and the validation split), a link may lead anywhere on the machine, and a FIFO named
``*.jpg`` blocks the decoder forever. Here:

* a directory is entered at most once (by its real path: a loop, or a second link to the same directory, is
  skipped), the directories reached without a link first: a link (in a class directory, or a class directory
  that is a link) to a directory reached without one, e.g. another class directory, is skipped, so that the
  images keep their own class; a symlink (to a directory or a file) is followed only when its target lies
  inside the data root; one that leads out of it is skipped;
* a link that leads nowhere (dangling, or a loop of links) is skipped;
* only regular files are taken: FIFOs, sockets and devices are skipped (never opened);
* a file reached twice (a link to an image of the folder) is taken once: at its own path when that is one of
  them, else at its first path in sorted order;

and every skip is reported in one warning per kind (a count and the first paths). Class directories are the
root's subdirectories (links to directories inside the root included), sorted by name = label order.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Dict, List, Tuple

from torchvision.datasets.folder import IMG_EXTENSIONS

log = logging.getLogger("lmdeq.app.train")

__all__ = ["scan_image_folder", "SHOWN"]

SHOWN = 3   # paths named per kind of skip


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _report(skips: Dict[str, List[str]], root: Path) -> None:
    for why, paths in skips.items():
        if paths:
            shown = ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")
            log.warning("data: skipped %d %s under %s: %s", len(paths), why, root, shown)


def scan_image_folder(root: str | os.PathLike) -> Tuple[List[str], List[Tuple[str, int]]]:
    """(classes, [(path, label)]) of the image files under ``root`` (see the module docstring); the paths in
    sorted order per class. FileNotFoundError when ``root`` holds no class directory."""
    root = Path(root)
    root_real = os.path.realpath(root)
    skips: Dict[str, List[str]] = {"symlink(s) leading out of the data root": [],
                                   "directory link(s) already visited (a loop or a second link)": [],
                                   "link(s) leading nowhere (dangling, or a loop of links)": [],
                                   "special file(s) (FIFO, socket or device; never opened)": [],
                                   "file(s) reached twice through a link (taken once)": []}
    classes = sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir()
                     and (not e.is_symlink() or _inside(e.path, root_real)))
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    seen_dirs = {root_real}
    files: Dict[int, Dict[str, List[str]]] = {label: {} for label in range(len(classes))}  # directory -> its images
    tops = [(label, os.path.join(root, name)) for label, name in enumerate(classes)]
    # Every directory reachable without a link is entered first; the directory links after them.
    links = [(label, path) for label, path in tops if os.path.islink(path)]
    pending = [(label, path) for label, path in tops if not os.path.islink(path)]
    while pending or links:
        label, directory = pending.pop() if pending else links.pop(0)
        real = os.path.realpath(directory)
        if real in seen_dirs:
            skips["directory link(s) already visited (a loop or a second link)"].append(directory)
            continue
        seen_dirs.add(real)
        files[label][directory] = []
        with os.scandir(directory) as entries:
            found = list(entries)
        for e in found:
            if e.is_symlink() and not _inside(e.path, root_real):
                skips["symlink(s) leading out of the data root"].append(e.path)
                continue
            try:
                mode = os.stat(e.path).st_mode   # (follows a link inside the root)
            except OSError:
                skips["link(s) leading nowhere (dangling, or a loop of links)"].append(e.path)
                continue
            if stat.S_ISDIR(mode):
                (links if e.is_symlink() else pending).append((label, e.path))
            elif e.name.lower().endswith(IMG_EXTENSIONS):
                if stat.S_ISREG(mode):
                    files[label][directory].append(e.name)
                else:
                    skips["special file(s) (FIFO, socket or device; never opened)"].append(e.path)
    # torchvision's order (sorted(os.walk(...)), then sorted names), so that splits and caches are as before
    candidates = [(os.path.join(directory, fname), label) for label in range(len(classes))
                  for directory in sorted(files[label]) for fname in sorted(files[label][directory])]
    # A file reached twice is taken once: at its own path when that is one of them (a link from another class
    # directory to it does not move it), else at the first path.
    chosen: Dict[str, Tuple[str, bool]] = {}   # real path -> (the path taken, whether it is the file's own)
    for path, _ in candidates:
        key = os.path.realpath(path)
        direct = os.path.join(root_real, os.path.relpath(path, root)) == key   # no link on the way
        if key not in chosen or (direct and not chosen[key][1]):
            chosen[key] = (path, direct)
    samples: List[Tuple[str, int]] = []
    for path, label in candidates:
        if chosen[os.path.realpath(path)][0] == path:
            samples.append((path, label))
        else:
            skips["file(s) reached twice through a link (taken once)"].append(path)
    _report(skips, root)
    return classes, samples
