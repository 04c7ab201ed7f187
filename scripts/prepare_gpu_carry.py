"""Make the data that scripts/gpu_check.sh takes to a lent GPU machine (which has no network and does
not receive ../shared): a class-balanced subset of the CIFAR-10 JPEG archive, written to
``gpu_carry/cifar10-subset.tar.gz`` (git-ignored; name ``gpu_carry`` in the device tool's ``carry``).

The subset is the first ``--per-class`` images of each class in file-name order (a fixed, reproducible
choice), in the same ``train/<class>/<name>.jpg`` layout, so ``lmdeq train --data`` and
``lmdeq bench --data`` read it like the full archive. The default, 1,200 per class (12,000 images,
about 4 MB), keeps the carried tree far below the tool's 64 MiB.

    python scripts/prepare_gpu_carry.py [--source ../shared/data/cifar10-train-jpeg.tar.gz] [--per-class 1200]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

from lmdeq.app.argtypes import output_file

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "gpu_carry" / "cifar10-subset.tar.gz"


def subset_members(names, per_class: int) -> list:
    """The first ``per_class`` ``<split>/<class>/<file>`` names of each class, sorted; other names ignored."""
    by_class = defaultdict(list)
    for name in names:
        parts = name.split("/")
        if len(parts) == 3 and parts[2]:
            by_class[parts[1]].append(name)
    if not by_class:
        raise ValueError("the archive holds no <split>/<class>/<image> members")
    short = {c: len(v) for c, v in by_class.items() if len(v) < per_class}
    if short:
        raise ValueError(f"per_class={per_class} exceeds the images of classes {short}")
    return [n for c in sorted(by_class) for n in sorted(by_class[c])[:per_class]]


def write_subset(source: Path, out: Path, per_class: int) -> int:
    """Copy the subset's members from ``source`` into a new gzip tar at ``out``; returns the image count."""
    with tarfile.open(source, "r:*") as src:
        members = {m.name: m for m in src.getmembers() if m.isfile()}
        chosen = subset_members(members, per_class)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        with tarfile.open(tmp, "w:gz") as dst:
            for name in chosen:
                data = src.extractfile(members[name]).read()
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), members[name].mtime, 0o644
                dst.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    return len(chosen)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CIFAR-10 JPEG archive (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=1200, help="images per class (default: %(default)s)")
    p.add_argument("--out", type=lambda v: Path(output_file(v)), default=DEFAULT_OUT,
                   help="output archive, in an existing writable directory (default: %(default)s, git-ignored, its "
                        "folder made if missing); replaced if it exists (the same images every time)")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error(f"--per-class must be >= 1, got {args.per_class}")
    if not args.source.is_file():
        p.error(f"--source {args.source} does not exist")
    n = write_subset(args.source, args.out, args.per_class)
    print(f"wrote {args.out}: {n} images, {args.out.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
