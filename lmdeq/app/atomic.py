"""Crash-safe file replacement, and removal of what a killed writer left behind.

:func:`atomic_write_bytes` writes ``.<name>.<pid>.<random>.tmp`` beside the target, fsyncs it, renames it
over the target and fsyncs the directory: after a crash at any instant the target holds either its old
or its new content, never a torn one. A writer killed mid-write leaves its temporary file;
:func:`remove_stale_temporaries` deletes those of dead processes (or, for a directory whose lock the
caller holds, all of them).
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from .faults import fault_point

_TMP = re.compile(r"^\.(?P<name>.+?)\.(?P<pid>\d+)(\.[0-9a-f]{8})?\.tmp$")  # (older lmdeq: no random part)


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, fault: str | None = None) -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring). ``fault`` names the fault points
    ``<fault>:partial`` / ``:written`` / ``:renamed`` (:mod:`lmdeq.app.faults`)."""
    path = Path(path)
    tmp = temporary_name(path)
    view = memoryview(data)
    try:
        with open(tmp, "xb") as fh:
            half = len(view) // 2
            fh.write(view[:half])
            if fault:
                fh.flush()
                fault_point(f"{fault}:partial")
            fh.write(view[half:])
            fh.flush()
            os.fsync(fh.fileno())
        if fault:
            fault_point(f"{fault}:written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    if fault:
        fault_point(f"{fault}:renamed")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike, all_owners: bool = False) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write_bytes` in ``directory`` whose writer is dead
    (``all_owners``: every one, for a directory the caller holds locked). Returns what was deleted."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        m = _TMP.match(entry.name)
        if m and entry.is_file() and (all_owners or not pid_alive(int(m["pid"]))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
