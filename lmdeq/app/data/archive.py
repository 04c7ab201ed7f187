"""Safe, atomic, extract-once unpacking of dataset archives (.tar.gz / .tgz / .tar) into a cache.

An archive is unpacked into ``<cache_dir>/<stem>-<sha256[:12]>``: first into a temporary sibling
directory ``.<stem>-partial-<pid>-*``, then renamed into place, and only a directory holding the
completion marker counts as extracted. A second call (or a concurrent one that lost the rename race)
reuses the result; partial directories of dead processes (a killed extraction) are deleted.

Members are checked before anything is written: absolute paths, ``..`` components, links and special
files are refused with a DataError naming the member. Sizes are capped: a member larger than
``max_member_bytes`` (default 32 MiB, ``LMDEQ_MAX_ARCHIVE_MEMBER``) or an archive whose members add up
to more than ``max_total_bytes`` (default 8 GiB, ``LMDEQ_MAX_ARCHIVE_TOTAL``) is refused; the copy
itself stops at the cap whatever the headers claim. A refused or failed extraction leaves nothing behind.
"""
from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from ..atomic import pid_alive
from ...files import file_sha256
from ...errors import ConfigError, DataError, DataNotFoundError
from ..faults import fault_point

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MARKER = ".lmdeq-extracted"
MEMBER_ENV, TOTAL_ENV = "LMDEQ_MAX_ARCHIVE_MEMBER", "LMDEQ_MAX_ARCHIVE_TOTAL"
DEFAULT_MAX_MEMBER, DEFAULT_MAX_TOTAL = 32 << 20, 8 << 30
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)
_PARTIAL = re.compile(r"^\..+-partial-(?P<pid>\d+)-")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def default_cache_dir() -> Path:
    """``$LMDEQ_CACHE/datasets`` if LMDEQ_CACHE is set, else ``~/.cache/lmdeq/datasets``."""
    root = os.environ.get("LMDEQ_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lmdeq"
    return base / "datasets"


def prepare_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cache directory (default :func:`default_cache_dir`), created if missing; DataError if it is a file
    or cannot be created."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    hint = "point --cache-dir (or LMDEQ_CACHE) at a writable directory"
    if cache.exists() and not cache.is_dir():
        raise DataError(f"cache: {cache} is a file, not a directory; {hint}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cache: cannot create {cache} ({err.strerror or err}); {hint}") from err
    return cache


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def size_limit(env: str, default: int) -> int:
    """Bytes from the environment variable ``env`` ('64M', '8G', '1000'), else ``default``."""
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?", text)
    if not m:
        raise ConfigError(f"{env}={text!r} is not a size (e.g. 64M, 8G or a number of bytes)")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    raise DataError(f"data: {path} is not a .tar.gz, .tgz or .tar archive")


def _safe_relative(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's path relative to the extraction root; DataError for anything unsafe."""
    rel = PurePosixPath(member.name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"data: archive {archive} member {member.name!r} escapes the extraction directory; refusing it")
    if not (member.isfile() or member.isdir()) or member.issparse():
        raise DataError(f"data: archive {archive} member {member.name!r} is a link or special file; refusing it")
    return rel


class _Limits:
    def __init__(self, archive: Path, max_member: int, max_total: int):
        self.archive, self.max_member, self.max_total, self.total = archive, max_member, max_total, 0

    def member_too_big(self, name: str, size: int):
        return DataError(f"data: archive {self.archive} member {name!r} is {format_bytes(size)}, over the per-file "
                         f"limit of {format_bytes(self.max_member)} (raise it with {MEMBER_ENV}=SIZE if it is genuine)")

    def total_too_big(self):
        return DataError(f"data: archive {self.archive} extracts to more than {format_bytes(self.max_total)}, the "
                         f"limit on an archive's total size (raise it with {TOTAL_ENV}=SIZE if it is genuine)")

    def charge(self, name: str, size: int) -> None:
        if size > self.max_member:
            raise self.member_too_big(name, size)
        self.total += size
        if self.total > self.max_total:
            raise self.total_too_big()


def _copy_capped(src, out, name: str, limits: _Limits, chunk: int = 1 << 20) -> None:
    """Copy at most the member's cap; more bytes than the header announced count against the caps too."""
    written = 0
    while True:
        block = src.read(chunk)
        if not block:
            return
        written += len(block)
        if written > limits.max_member:
            raise limits.member_too_big(name, written)
        out.write(block)


def _check_no_file_on_the_way(target: Path, dest: Path, member: tarfile.TarInfo, archive: Path) -> None:
    """DataError when an earlier member made a file where this member needs a directory, or a directory where
    this member is a file: the archive is malformed, which must not read as a full disk."""
    for parent in list(target.parents)[::-1]:
        if parent.is_relative_to(dest) and parent != dest and parent.is_file():
            raise DataError(f"data: {archive} is malformed: its member {member.name!r} lies inside "
                            f"{parent.relative_to(dest).as_posix()!r}, which an earlier member made a file")
    if target != dest and ((member.isdir() and target.is_file()) or (not member.isdir() and target.is_dir())):
        raise DataError(f"data: {archive} is malformed: {member.name!r} is given twice, as a directory and as a file")


def _extract_members(tar: tarfile.TarFile, dest: Path, limits: _Limits) -> int:
    n_files = 0
    for member in tar:
        rel = _safe_relative(member, limits.archive)
        target = dest.joinpath(*rel.parts) if rel.parts else dest
        _check_no_file_on_the_way(target, dest, member, limits.archive)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        limits.charge(member.name, member.size)
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        with src, open(target, "wb") as out:
            _copy_capped(src, out, member.name, limits)
        n_files += 1
        if n_files == 1:
            fault_point("extract:member")
    return n_files


def remove_dead_partials(cache: Path) -> None:
    """Delete the partial extraction directories that killed processes left in ``cache``."""
    for entry in cache.iterdir():
        m = _PARTIAL.match(entry.name)
        if m and entry.is_dir() and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def extract_archive(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                    max_member_bytes: int | None = None, max_total_bytes: int | None = None) -> Path:
    """Extract ``path`` once into the cache and return the extracted directory.

    The directory name carries the archive's content hash, so a changed archive is extracted
    anew instead of silently reusing stale files. Size caps: see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"data: archive {path} does not exist")
    stem = archive_stem(path)
    cache = prepare_cache_dir(cache_dir)
    limits = _Limits(path, size_limit(MEMBER_ENV, DEFAULT_MAX_MEMBER) if max_member_bytes is None else max_member_bytes,
                     size_limit(TOTAL_ENV, DEFAULT_MAX_TOTAL) if max_total_bytes is None else max_total_bytes)
    sha = file_sha256(path)
    dest = cache / f"{stem}-{sha[:12]}"
    if (dest / MARKER).is_file():
        return dest
    remove_dead_partials(cache)
    if dest.exists():  # left behind by something other than this function: not trusted
        shutil.rmtree(dest)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-partial-{os.getpid()}-", dir=cache))
    except OSError as err:
        raise DataError(f"data: cannot write into the cache {cache} ({err.strerror or err})") from err
    try:
        try:
            with tarfile.open(path, "r:*") as tar:
                n_files = _extract_members(tar, tmp, limits)
        except _CORRUPT as err:
            raise DataError(f"data: {path} is not a readable tar archive, or is truncated or corrupt "
                            f"({type(err).__name__}: {err}); re-create or re-download it") from err
        except OSError as err:  # writing into the cache
            raise DataError(f"data: cannot extract {path} into the cache {cache} ({err.strerror or err}); free space "
                            "or choose another --cache-dir") from err
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
