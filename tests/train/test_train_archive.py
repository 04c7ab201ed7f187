"""Extract-once archive handling: layout, reuse, content-hash naming, and refusal of unsafe members."""
import io
import os
import tarfile

import pytest

from lmdeq.app.data.archive import MARKER, archive_stem, default_cache_dir, extract_archive


def _tar(path, members):
    """members: list of (TarInfo-kwargs, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_extracts_once_and_reuses(tmp_path):
    arc = _tar(tmp_path / "set.tar.gz", [("train", None, "dir"), ("train/a/0.bin", b"abc", "file"),
                                         ("train/b/1.bin", b"de", "file")])
    cache = tmp_path / "cache"
    dest = extract_archive(arc, cache)
    assert dest.parent == cache and dest.name.startswith("set-")
    assert (dest / "train/a/0.bin").read_bytes() == b"abc"
    assert (dest / "train/b/1.bin").read_bytes() == b"de"
    assert (dest / MARKER).is_file()
    stamp = os.stat(dest / "train/a/0.bin").st_mtime_ns
    assert extract_archive(arc, cache) == dest
    assert os.stat(dest / "train/a/0.bin").st_mtime_ns == stamp  # not extracted again
    assert [p.name for p in cache.iterdir()] == [dest.name]  # no temporary directories left


def test_changed_archive_gets_a_new_directory(tmp_path):
    cache = tmp_path / "cache"
    first = extract_archive(_tar(tmp_path / "set.tgz", [("x/1", b"1", "file")]), cache)
    second = extract_archive(_tar(tmp_path / "set.tgz", [("x/1", b"2", "file")]), cache)
    assert first != second and (second / "x/1").read_bytes() == b"2"


def test_incomplete_directory_is_not_trusted(tmp_path):
    arc = _tar(tmp_path / "set.tar.gz", [("x/1", b"1", "file")])
    cache = tmp_path / "cache"
    dest = extract_archive(arc, cache)
    (dest / MARKER).unlink()
    (dest / "x/1").write_bytes(b"garbage")
    assert (extract_archive(arc, cache) / "x/1").read_bytes() == b"1"


@pytest.mark.parametrize("members", [
    [("../evil", b"x", "file")],
    [("ok/../../evil", b"x", "file")],
    [("/abs/evil", b"x", "file")],
    [("link", "/etc/passwd", "symlink")],
])
def test_unsafe_members_are_refused_and_nothing_is_left(tmp_path, members):
    arc = _tar(tmp_path / "bad.tar.gz", [("fine/1", b"1", "file")] + members)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"member .* (escapes|is a link)"):
        extract_archive(arc, cache)
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        extract_archive(tmp_path / "missing.tar.gz", tmp_path)
    not_tar = tmp_path / "junk.tar.gz"
    not_tar.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        extract_archive(not_tar, tmp_path / "cache")
    with pytest.raises(ValueError, match="not a .tar.gz"):
        archive_stem("data.zip")


def test_default_cache_dir_honours_lmdeq_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMDEQ_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "datasets"
    monkeypatch.delenv("LMDEQ_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "lmdeq", "datasets")
