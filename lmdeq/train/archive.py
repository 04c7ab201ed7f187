"""Safe, atomic, extract-once unpacking of dataset archives (.tar.gz / .tgz / .tar) into a cache.

An archive is unpacked into ``<cache_dir>/<stem>-<sha256[:12]>``: first into a temporary sibling
directory, then renamed into place, and only a directory holding the completion marker counts as
extracted. A second call (or a concurrent one that lost the rename race) reuses the result.
Members are checked before anything is written: absolute paths, ``..`` components, links and
special files are refused with a ValueError naming the member.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MARKER = ".lmdeq-extracted"


def default_cache_dir() -> Path:
    """``$LMDEQ_CACHE/datasets`` if LMDEQ_CACHE is set, else ``~/.cache/lmdeq/datasets``."""
    root = os.environ.get("LMDEQ_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lmdeq"
    return base / "datasets"


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    raise ValueError(f"data: {path} is not a .tar.gz, .tgz or .tar archive")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_relative(member: tarfile.TarInfo) -> PurePosixPath:
    """The member's path relative to the extraction root; ValueError for anything unsafe."""
    rel = PurePosixPath(member.name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"archive member {member.name!r} escapes the extraction directory")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"archive member {member.name!r} is a link or special file; refusing to extract it")
    return rel


def _extract_members(tar: tarfile.TarFile, dest: Path) -> int:
    n_files = 0
    for member in tar:
        rel = _safe_relative(member)
        target = dest.joinpath(*rel.parts) if rel.parts else dest
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        n_files += 1
    return n_files


def extract_archive(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Extract ``path`` once into the cache and return the extracted directory.

    The directory name carries the archive's content hash, so a changed archive is extracted
    anew instead of silently reusing stale files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: archive {path} does not exist")
    stem = archive_stem(path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(path)
    dest = cache / f"{stem}-{sha[:12]}"
    if (dest / MARKER).is_file():
        return dest
    if dest.exists():  # left behind by something other than this function: not trusted
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-partial-", dir=cache))
    try:
        try:
            with tarfile.open(path, "r:*") as tar:
                n_files = _extract_members(tar, tmp)
        except tarfile.TarError as err:
            raise ValueError(f"data: {path} is not a readable tar archive ({err})") from err
        (tmp / MARKER).write_text(json.dumps({"source": str(path.resolve()), "sha256": sha, "files": n_files}))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / MARKER).is_file():  # the rename failed for a reason other than a lost race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
