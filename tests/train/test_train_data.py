"""Data path: ImageFolder decoding and its cache, --data specs, stratified splits, a run's splits."""
import os
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from train_helpers import CLASSES, write_image_folder
from PIL import Image

from lmdeq.app.data import sources
from lmdeq.app.train.config import TrainConfig
from lmdeq.app.data.run_data import prepare_splits
from lmdeq.app.data.folder import find_split_dirs, load_image_folder
from lmdeq.app.data.images import LabelledImages
from lmdeq.app.data.sources import load_source
from lmdeq.app.data.split import derive_seed, stratified_holdout, stratified_subset


def test_folder_decodes_exact_pixels_in_imagefolder_order(image_folder, tmp_path):
    data = load_image_folder(image_folder, tmp_path / "cache")
    assert data.classes == CLASSES and len(data) == 24
    assert data.images.shape == (24, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [c for c in range(4) for _ in range(6)]
    ref = np.array(Image.open(image_folder / "c2" / "0003.png").convert("RGB"))
    assert torch.equal(data.images[2 * 6 + 3], torch.from_numpy(ref).permute(2, 0, 1))


def test_folder_cache_is_reused_and_invalidated(image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_image_folder(image_folder, cache)
    assert len(list((cache / "decoded").glob("*.pt"))) == 1

    def _no_decode(*a, **k):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr("lmdeq.app.data.folder._decode", _no_decode)
    again = load_image_folder(image_folder, cache)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    monkeypatch.undo()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image_folder / "c0" / "0000.png")
    os.utime(image_folder / "c0" / "0000.png", ns=(1, 1))
    changed = load_image_folder(image_folder, cache)
    assert changed.images[0].sum() == 0


def test_folder_workers_give_the_same_images(image_folder, tmp_path):
    a = load_image_folder(image_folder, tmp_path / "c1", workers=0)
    b = load_image_folder(image_folder, tmp_path / "c2", workers=2)
    assert torch.equal(a.images, b.images)


def test_folder_errors(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=2)
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(root / "c1" / "odd.png")
    with pytest.raises(ValueError, match="odd.png is 32x30"):
        load_image_folder(root, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an ImageFolder"):
        load_image_folder(tmp_path / "empty", tmp_path / "cache")


def test_find_split_dirs(tmp_path):
    write_image_folder(tmp_path / "a" / "wrap" / "train", per_class=1)
    assert find_split_dirs(tmp_path / "a") == (tmp_path / "a/wrap/train", None)
    write_image_folder(tmp_path / "b" / "train", per_class=1)
    write_image_folder(tmp_path / "b" / "test", per_class=1)
    assert find_split_dirs(tmp_path / "b") == (tmp_path / "b/train", tmp_path / "b/test")
    write_image_folder(tmp_path / "c", per_class=1)
    assert find_split_dirs(tmp_path / "c") == (tmp_path / "c", None)


def test_source_from_tar_matches_directory(image_folder, tmp_path):
    arc = tmp_path / "set.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(image_folder, arcname="train")
    from_tar = load_source(str(arc), tmp_path / "cache")
    from_dir = load_source(str(image_folder.parent), tmp_path / "cache")
    assert from_tar.test is None and from_dir.test is None
    assert torch.equal(from_tar.train.images, from_dir.train.images)
    assert from_tar.train.classes == CLASSES


def test_source_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .tar.gz"):
        load_source(str(tmp_path / "file.txt"), tmp_path)
    with pytest.raises(TypeError, match="data must be"):
        load_source(None, tmp_path)

    class Offline:
        def __init__(self, *a, **k):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", Offline)
    with pytest.raises(RuntimeError, match="could not load or download torchvision CIFAR-10.*--data"):
        load_source("cifar10", tmp_path)


def test_torchvision_source_layout(tmp_path, monkeypatch):
    class FakeCIFAR10:
        classes = list(CLASSES)

        def __init__(self, root, train, download):
            n = 8 if train else 4
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).reshape(n, 32, 32, 3).astype(np.uint8)
            self.targets = [i % 4 for i in range(n)]

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    src = load_source(f"{sources.TORCHVISION_PREFIX}{tmp_path}", tmp_path)
    assert len(src.train) == 8 and len(src.test) == 4
    assert torch.equal(src.train.images[1, :, 2, 3], torch.from_numpy(FakeCIFAR10(0, True, 0).data[1, 2, 3]))


def _labels(counts):
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts))]


def test_holdout_is_stratified_disjoint_and_seeded():
    labels = _labels([50, 30, 21])
    tr, va = stratified_holdout(labels, 3, 0.2, seed=3)
    assert torch.bincount(labels[va], minlength=3).tolist() == [10, 6, 4]
    assert sorted(tr.tolist() + va.tolist()) == list(range(101))
    tr2, va2 = stratified_holdout(labels, 3, 0.2, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, stratified_holdout(labels, 3, 0.2, seed=4)[1])


def test_subset_keeps_class_proportions():
    labels = _labels([50, 30, 20])
    idx = stratified_subset(labels, 3, 10, seed=0, tag="t")
    assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 3, 2]
    assert idx.unique().numel() == 10
    idx = stratified_subset(labels, 3, 7, seed=0, tag="t")  # 3.5, 2.1, 1.4 -> 4, 2, 1
    assert torch.bincount(labels[idx], minlength=3).tolist() == [4, 2, 1]
    assert torch.equal(stratified_subset(labels, 3, 1000, seed=0, tag="t"), torch.arange(100))
    assert derive_seed(0, "a") != derive_seed(0, "b") != derive_seed(1, "a")


def test_holdout_of_tiny_classes_is_not_empty():
    labels = _labels([2, 2, 2, 2])
    _, va = stratified_holdout(labels, 4, 0.25, seed=0)
    assert torch.bincount(labels[va], minlength=4).tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001, 0.999])
def test_holdout_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_holdout(_labels([10, 10]), 2, fraction, seed=0)


def test_subset_bad_limit():
    with pytest.raises(ValueError, match="limit must be >= 1"):
        stratified_subset(_labels([3, 3]), 2, 0, 0, "t")
    with pytest.raises(TypeError, match="limit must be an int"):
        stratified_subset(_labels([3, 3]), 2, 2.5, 0, "t")


def test_labelled_images_validation():
    with pytest.raises(TypeError, match="uint8"):
        LabelledImages(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(ValueError, match="labels has 3 entries"):
        LabelledImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        LabelledImages(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.ones(1, dtype=torch.int64), ("a",))


def test_prepare_splits_holdout_then_limits(tmp_path):
    write_image_folder(tmp_path / "d" / "train", per_class=10)
    cfg = TrainConfig(data=str(tmp_path / "d"), val_fraction=0.2, limit_train=12, limit_val=4, seed=5)
    s = prepare_splits(cfg, tmp_path / "cache")
    assert (len(s.train), len(s.val), s.val_name) == (12, 4, "holdout")
    assert torch.bincount(s.train.labels).tolist() == [3, 3, 3, 3]
    assert torch.bincount(s.val.labels).tolist() == [1, 1, 1, 1]
    full = prepare_splits(cfg.replace(limit_train=None, limit_val=None), tmp_path / "cache")
    as_rows = lambda x: {bytes(r.numpy()) for r in x.images.flatten(1)}  # noqa: E731
    assert not as_rows(full.train) & as_rows(full.val)  # held-out images are never trained on
    assert as_rows(s.val) <= as_rows(full.val)
    assert prepare_splits(cfg.replace(val_fraction=0.0), tmp_path / "cache").val is None


def test_prepare_splits_prefers_test_split_and_val_data(tmp_path):
    write_image_folder(tmp_path / "d" / "train", per_class=4)
    write_image_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    s = prepare_splits(TrainConfig(data=str(tmp_path / "d")), tmp_path / "cache")
    assert (len(s.train), len(s.val), s.val_name) == (16, 8, "test")
    write_image_folder(tmp_path / "v", per_class=1, seed=2)
    s = prepare_splits(TrainConfig(data=str(tmp_path / "d"), val_data=str(tmp_path / "v")), tmp_path / "cache")
    assert (len(s.val), s.val_name) == (4, "val-data")
    write_image_folder(tmp_path / "w", per_class=1, classes=("x", "y"))
    with pytest.raises(ValueError, match="differ from the training classes"):
        prepare_splits(TrainConfig(data=str(tmp_path / "d"), val_data=str(tmp_path / "w")), tmp_path / "cache")
    with pytest.raises(ValueError, match="no training data"):
        prepare_splits(TrainConfig(), tmp_path / "cache")
