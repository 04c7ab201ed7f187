"""Bad data: archive size caps and the clean-up of killed extractions (item 4), undecodable images skipped
and reported or refused (5), a torn or hostile decoded cache rebuilt (6), one-class folders (10), and
pickle payloads that never run (weights_only on every load path)."""
import io
import re
import logging
import os
import signal
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import run_in_fork, write_image_folder

from lmdeq.errors import CheckpointError, ConfigError, DataError
from lmdeq.app.data.archive import MEMBER_ENV, TOTAL_ENV, extract_archive, size_limit
from lmdeq.app.train.checkpoint import load_checkpoint
from lmdeq.app.data.folder import find_split_dirs, load_image_folder


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _jpeg(seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# -- item 4: decompression caps and leftovers -----------------------------------------------------------------
def test_a_member_over_the_cap_is_refused_and_nothing_stays(tmp_path):
    arc = _tar(tmp_path / "bomb.tar.gz", [("train/a/0.png", bytes(3 << 20))])  # 3 MiB of zeros: a few KiB packed
    assert arc.stat().st_size < 50_000
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"'train/a/0.png' is 3 MiB, over the per-file limit of 1 MiB.*{MEMBER_ENV}"):
        extract_archive(arc, cache, max_member_bytes=1 << 20)
    assert list(cache.iterdir()) == []
    assert (extract_archive(arc, cache, max_member_bytes=4 << 20) / "train/a/0.png").stat().st_size == 3 << 20


def test_the_total_is_capped_and_both_caps_come_from_the_environment(tmp_path, monkeypatch):
    arc = _tar(tmp_path / "many.tar.gz", [(f"train/a/{i}.png", bytes(300 << 10)) for i in range(4)])
    monkeypatch.setenv(TOTAL_ENV, "1M")
    with pytest.raises(DataError, match=rf"extracts to more than 1 MiB.*{TOTAL_ENV}"):
        extract_archive(arc, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setenv(TOTAL_ENV, "2M")
    monkeypatch.setenv(MEMBER_ENV, "100k")
    with pytest.raises(DataError, match="over the per-file limit of 100 KiB"):
        extract_archive(arc, tmp_path / "cache")
    monkeypatch.delenv(MEMBER_ENV)
    assert len(list((extract_archive(arc, tmp_path / "cache") / "train/a").iterdir())) == 4
    assert size_limit("X_UNSET_FOR_TEST", 7) == 7
    for text, value in (("64M", 64 << 20), ("8G", 8 << 30), ("1.5k", 1536), ("1000", 1000), ("2MiB", 2 << 20)):
        monkeypatch.setenv(MEMBER_ENV, text)
        assert size_limit(MEMBER_ENV, 0) == value
    monkeypatch.setenv(MEMBER_ENV, "lots")
    with pytest.raises(ConfigError, match="is not a size"):
        size_limit(MEMBER_ENV, 0)


def test_a_killed_extraction_is_cleaned_up_by_the_next(tmp_path):
    arc = _tar(tmp_path / "set.tar.gz", [("train/a/0.jpg", _jpeg(0)), ("train/a/1.jpg", _jpeg(1))])
    cache = tmp_path / "cache"
    cache.mkdir()
    assert run_in_fork(extract_archive, arc, cache, fault="extract:member") == -signal.SIGKILL
    left = [p.name for p in cache.iterdir()]
    assert len(left) == 1 and left[0].startswith(".set-partial-")  # what the kill left behind
    dest = extract_archive(arc, cache)
    assert sorted(p.name for p in cache.iterdir()) == [dest.name]
    assert len(list((dest / "train/a").iterdir())) == 2


def test_a_truncated_archive_is_one_clear_error(tmp_path):
    arc = _tar(tmp_path / "set.tar.gz", [(f"train/a/{i}.jpg", os.urandom(4096)) for i in range(8)])
    (tmp_path / "cut.tar.gz").write_bytes(arc.read_bytes()[:20_000])
    with pytest.raises(DataError, match="cut.tar.gz is not a readable tar archive, or is truncated or corrupt"):
        extract_archive(tmp_path / "cut.tar.gz", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_dir_that_is_a_file(tmp_path):
    from lmdeq.app.data.sources import load_source

    (tmp_path / "f").write_text("x")
    write_image_folder(tmp_path / "d" / "train", per_class=1)
    with pytest.raises(DataError, match="cache: .*f is a file, not a directory; point --cache-dir"):
        load_source(str(tmp_path / "d"), tmp_path / "f")


# -- item 5: undecodable images ------------------------------------------------------------------------------
@pytest.fixture
def bad_folder(tmp_path):
    root = write_image_folder(tmp_path / "bad" / "train", per_class=3)
    (root / "c0" / "zero.jpg").write_bytes(b"")
    (root / "c1" / "random.jpg").write_bytes(os.urandom(500))
    (root / "c2" / "truncated.jpg").write_bytes(_jpeg(2)[:250])
    (root / "c3" / "text.png").write_text("hello")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_files_are_skipped_and_reported(bad_folder, tmp_path, caplog, workers):
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        data = load_image_folder(bad_folder, tmp_path / "cache", workers=workers)
    assert len(data) == 12 and data.labels.tolist() == [c for c in range(4) for _ in range(3)]
    msg = caplog.text
    assert "skipped 4 of 16 image files" in msg and "--strict" in msg
    for name in ("c0/zero.jpg", "c1/random.jpg", "c2/truncated.jpg", "c3/text.png"):
        assert name in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        again = load_image_folder(bad_folder, tmp_path / "cache")  # from the cache: reported again
    assert torch.equal(again.images, data.images) and "skipped 4 of 16" in caplog.text


def test_strict_fails_naming_the_file(bad_folder, tmp_path):
    with pytest.raises(DataError, match=r"cannot decode .*c0/zero.jpg .*drop --strict"):
        load_image_folder(bad_folder, tmp_path / "cache", strict=True)
    load_image_folder(bad_folder, tmp_path / "cache")  # cached, with its skipped files ...
    with pytest.raises(DataError, match="cannot decode .*zero.jpg"):
        load_image_folder(bad_folder, tmp_path / "cache", strict=True)  # ... which strict still refuses


def test_many_skipped_files_show_the_first_few(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", per_class=1)
    for i in range(9):
        (root / "c0" / f"bad{i}.jpg").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        load_image_folder(root, tmp_path / "cache")
    assert "skipped 9 of 13" in caplog.text and "and 4 more" in caplog.text


def test_a_folder_without_any_decodable_image(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        (tmp_path / "d" / c / "0.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 2 image files"):
        load_image_folder(tmp_path / "d", tmp_path / "cache")


# -- item 6: the decoded cache -------------------------------------------------------------------------------
def _cache_file(cache):
    (path,) = (cache / "decoded").glob("*.pt")
    return path


def test_a_torn_cache_is_rebuilt_and_said_so(image_folder, tmp_path, caplog):
    first = load_image_folder(image_folder, tmp_path / "cache")
    path = _cache_file(tmp_path / "cache")
    path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        again = load_image_folder(image_folder, tmp_path / "cache")
    assert torch.equal(again.images, first.images)
    assert f"decoded cache {path} does not load" in caplog.text and "rebuilding it" in caplog.text
    assert torch.load(path, weights_only=True)["images"].shape == first.images.shape  # rewritten whole


def test_leftover_temporaries_of_dead_writers_are_removed(image_folder, tmp_path):
    load_image_folder(image_folder, tmp_path / "cache")
    decoded = tmp_path / "cache" / "decoded"
    dead = decoded / ".abc.pt.999999.0123abcd.tmp"  # pid 999999 does not exist here
    dead.write_bytes(b"")
    mine = decoded / f".abc.pt.{os.getpid()}.0123abcd.tmp"  # a live writer's: kept
    mine.write_bytes(b"")
    _cache_file(tmp_path / "cache").unlink()
    load_image_folder(image_folder, tmp_path / "cache")
    assert not dead.exists() and mine.exists()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_payloads_never_run(image_folder, tmp_path, caplog):
    """weights_only holds on every load path: a checkpoint and a decoded cache that would run code."""
    marker = tmp_path / "payload-ran"
    torch.save({"format": "lmdeq-train-checkpoint", "version": 2, "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"pickles Python objects \(io.open\).*never loads"):
        load_checkpoint(tmp_path / "evil.pt")
    first = load_image_folder(image_folder, tmp_path / "cache")
    torch.save({"images": _Payload(str(marker))}, _cache_file(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="lmdeq"):
        again = load_image_folder(image_folder, tmp_path / "cache")
    assert torch.equal(again.images, first.images) and "rebuilding it" in caplog.text
    assert not marker.exists()


# -- item 10: one-class folders --------------------------------------------------------------------------------
def test_a_one_class_folder_is_that_folder_not_its_class(tmp_path):
    root = write_image_folder(tmp_path / "only", per_class=2, classes=("airplane",))
    assert find_split_dirs(root) == (root, None)  # not descended into airplane/
    assert load_image_folder(root, tmp_path / "cache").classes == ("airplane",)
    wrapped = write_image_folder(tmp_path / "wrap" / "inner", per_class=1)
    assert find_split_dirs(tmp_path / "wrap") == (wrapped, None)  # a real wrapper is still descended


@pytest.mark.parametrize("members,needle", [
    ([("train/k0", "file"), ("train/k0/0.jpg", "file")], "lies inside 'train/k0', which an earlier member made a file"),
    ([("train/k0", "dir"), ("train/k0", "file")], "'train/k0' is given twice, as a directory and as a file"),
    ([("train/k0", "file"), ("train/k0", "dir")], "'train/k0' is given twice, as a directory and as a file"),
])
def test_a_member_that_is_a_file_and_a_directory_is_a_malformed_archive(tmp_path, members, needle):
    """Not 'free space or choose another --cache-dir': the archive itself is wrong, and the error says so."""
    path = tmp_path / "odd.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"xx"))
    with pytest.raises(DataError, match="is malformed: .*" + re.escape(needle)):
        extract_archive(path, tmp_path / "cache")
