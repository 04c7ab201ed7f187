"""Which files of an ImageFolder are images (lmdeq.app.data.scan) and how odd ones decode (issue 28 item 3): a symlink
loop is not followed, a link out of the data root is not taken, a FIFO is skipped (never opened: no hang), a file
reached twice is taken once at its own path, 16-bit images keep their top bits, float images are refused, and
fixing a file's permissions invalidates the decoded cache."""
import logging
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from lmdeq.app.data.folder import load_image_folder
from lmdeq.app.data.scan import scan_image_folder

from train_helpers import write_image_folder


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO opened for reading blocks forever: fail after 60 s instead of hanging the suite."""
    def fail(*_):
        raise TimeoutError("the data loader blocked (a FIFO was opened?)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _rel(root, samples):
    return [(os.path.relpath(p, root), label) for p, label in samples]


def test_a_plain_folder_scans_as_torchvision_does(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=3)
    (root / "c1" / "deeper").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "c1" / "deeper" / "x.png")
    classes, idx = find_classes(str(root))
    assert scan_image_folder(root) == (classes, make_dataset(str(root), idx, extensions=IMG_EXTENSIONS))


def test_links_loops_and_special_files(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", per_class=2)
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside)
    first = sorted(os.listdir(root))[0]
    other = sorted(os.listdir(root))[1]
    os.symlink("..", root / first / "loop")                       # a loop back to the root
    os.symlink(outside, root / first / "evil.png")                # a link out of the root
    os.symlink(root / other / "0000.png", root / first / "dup.png")   # another class's image
    os.mkfifo(root / first / "fifo.png")
    with caplog.at_level(logging.WARNING, logger="lmdeq.app.train"):
        classes, samples = scan_image_folder(root)
    got = _rel(root, samples)
    assert len(got) == len(set(p for p, _ in got)) == 2 * len(classes)        # each image once
    assert (f"{other}/0000.png", classes.index(other)) in got               # at its own path, in its class
    assert not any(p.endswith(("evil.png", "dup.png", "fifo.png")) or "loop" in p for p, _ in got)
    text = caplog.text
    for why in ("leading out of the data root", "already visited", "special file", "reached twice"):
        assert why in text, why
    data = load_image_folder(root, tmp_path / "cache")                     # decodes without blocking on the FIFO
    assert len(data) == 2 * len(classes)


def test_a_link_to_a_directory_inside_the_root_is_followed_once(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    first = sorted(os.listdir(root))[0]
    os.symlink(root / first, root / "alias")                              # a class directory that is a link
    classes, samples = scan_image_folder(root)
    assert "alias" in classes and len(samples) == 2 * (len(classes) - 1)  # its files once, under the real one


def test_sixteen_bit_images_keep_their_top_bits_and_floats_are_refused(tmp_path, caplog):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(root / "a" / "g16.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "b" / "rgb.png")
    Image.fromarray(np.random.rand(32, 32).astype(np.float32)).save(root / "b" / "float.tiff")
    with caplog.at_level(logging.WARNING, logger="lmdeq.app.train"):
        data = load_image_folder(root, tmp_path / "cache")
    assert len(data) == 2 and "floating-point" in caplog.text
    g = data.images[data.labels.tolist().index(0)]
    assert torch.equal(g[0], torch.from_numpy((ramp >> 8).astype(np.uint8))) and torch.equal(g[0], g[2])
    with pytest.raises(Exception, match="floating-point"):
        load_image_folder(root, tmp_path / "cache2", strict=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_fixing_permissions_invalidates_the_cache(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    victim = root / sorted(os.listdir(root))[0] / "0000.png"
    victim.chmod(0)
    n = len(load_image_folder(root, tmp_path / "cache"))
    victim.chmod(0o644)
    assert len(load_image_folder(root, tmp_path / "cache")) == n + 1


def test_a_chmod_changes_the_cache_key(tmp_path):
    # (as root, unreadable files are still read: the key itself must change with the file's status)
    from lmdeq.app.data.folder import _cache_key

    root = write_image_folder(tmp_path / "d", per_class=2)
    classes, samples = scan_image_folder(root)
    before = _cache_key(root, samples, classes)
    os.chmod(samples[0][0], 0o600)
    assert _cache_key(root, samples, classes) != before
